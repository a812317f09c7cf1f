"""Per-worker load of the requests this router placed: queued prefill, decode blocks, in flight.

Why our own accounting: the processor forwards with ``client.direct(..., context=...)`` so a
client disconnect reaches the worker, and Dynamo's ``KvRouter`` only tracks load for requests
it forwards itself (brief 3.6). Asking it with no load of its own also makes its
``potential_prefill_tokens`` exactly this request's uncached tokens, so one call gives the
overlap. The accounting mirrors Dynamo's active-sequence tracking: a request's uncached
tokens count as queued prefill until its first token, and its blocks (prompt + expected
output) count as decode blocks until it ends.

State is one small record per request in flight and three numbers per live worker; every
update is O(1). A record whose end is never reported is expired by ``expire`` (called by the
background sweep), so lost feedback cannot leak load or memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(slots=True)
class _Active:
    worker_id: int
    queued_tokens: int  # uncached prompt tokens until the first token, then 0
    blocks: int
    started: float  # monotonic seconds; entries whose "finish" never came are expired


@dataclass(slots=True)
class WorkerLoad:
    queued_prefill_tokens: int = 0
    decode_blocks: int = 0
    active_requests: int = 0


class LoadTracker:
    """Load of the requests in flight, per worker; ``start``/``first_token``/``finish``."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._active: dict[str, _Active] = {}
        self._workers: dict[int, WorkerLoad] = {}

    def __len__(self) -> int:
        return len(self._active)

    def busy(self) -> dict[int, WorkerLoad]:
        """Load of the workers with requests in flight (read-only view; others are idle)."""
        return self._workers

    def get(self, worker_id: int) -> WorkerLoad:
        return self._workers.get(worker_id) or WorkerLoad()

    def start(
        self, request_id: str, worker_id: int, uncached_tokens: int, prompt_tokens: int, osl: int
    ) -> None:
        blocks = -(-(prompt_tokens + osl) // self.block_size)
        self._active[request_id] = _Active(worker_id, uncached_tokens, blocks, time.monotonic())
        load = self._workers.setdefault(worker_id, WorkerLoad())
        load.queued_prefill_tokens += uncached_tokens
        load.decode_blocks += blocks
        load.active_requests += 1

    def first_token(self, request_id: str) -> None:
        active = self._active.get(request_id)
        if active is None or active.queued_tokens == 0:
            return
        self._workers[active.worker_id].queued_prefill_tokens -= active.queued_tokens
        active.queued_tokens = 0

    def expire(self, started_before: float) -> int:
        """Finish requests started before ``started_before`` whose end was never reported (a
        lost feedback message, a crashed caller); oldest first, so O(expired)."""
        expired = 0
        for request_id, active in list(self._active.items()):
            if active.started >= started_before:
                break
            self.finish(request_id)
            expired += 1
        return expired

    def finish(self, request_id: str) -> None:
        active = self._active.pop(request_id, None)
        if active is None:
            return
        load = self._workers[active.worker_id]
        load.queued_prefill_tokens -= active.queued_tokens
        load.decode_blocks -= active.blocks
        load.active_requests -= 1
        if load.active_requests == 0:
            del self._workers[active.worker_id]
