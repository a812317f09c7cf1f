"""Per-worker load of the requests this router placed: queued prefill, decode blocks, in flight.

Why our own accounting: the processor forwards with ``client.direct(..., context=...)``, and
Dynamo's ``KvRouter`` only tracks load for requests it forwards itself. Forwarding through it
(``generate_from_request`` pinned to our worker) would cancel and fail alike
(tests/integration/test_forwarding.py), but it counts load differently (distinct prompt blocks,
no expected output), and the score's decode weight and KV-full term were measured with this
accounting (docs/DESIGN.md). Asking the KvRouter with no load of its own also makes its
``potential_prefill_tokens`` exactly this request's uncached tokens, so one call gives the
overlap. A request's uncached tokens count as queued prefill until its first token, and its
blocks (prompt + expected output) count as decode blocks until it ends.

State is one small record per request in flight and three numbers per live worker; every
update is O(1). A record whose end is never reported is expired by ``expire`` (called by the
background sweep), so lost feedback cannot leak load or memory.

How long a request holds its blocks (``hold_ms``): the time it decodes, output tokens x
ITL, as requests report it when they end (an EWMA over all workers), for the KV-full term's
wait. It starts at ``HOLD_PRIOR_MS`` until the first report.

Unique blocks (when the caller passes a request's chained block hashes): ``decode_blocks``
counts a system prompt shared by ten requests ten times (Dynamo's sequence tracker counts it
once), which is right for decode cost but wrong for memory. With hashes each worker also keeps
a reference count per block of its requests in flight, so ``used_blocks`` = distinct prompt
blocks + each request's own output and partial blocks: what the engine must hold for our
traffic. The hashes of a request live only while it is in flight (released at finish or
expiry), one int per 64-token block.
"""

from __future__ import annotations

from dataclasses import dataclass


def request_blocks(prompt_tokens: int, osl: int, block_size: int) -> int:
    """KV blocks a request holds by its end: prompt + expected output, the last one partial."""
    return -(-(prompt_tokens + osl) // block_size)


HOLD_EWMA = 0.02  # weight of each finished request in hold_ms: about the last 50 requests
HOLD_PRIOR_MS = 300.0  # before any request reported its decode: the fixed turnover it replaced


@dataclass(slots=True)
class _Active:
    worker_id: int
    queued_tokens: int  # uncached prompt tokens until the first token, then 0
    blocks: int
    started: float  # monotonic seconds; entries whose "finish" never came are expired
    hashes: tuple[int, ...] = ()  # chained prompt block hashes (unique-block accounting only)


@dataclass(slots=True)
class WorkerLoad:
    queued_prefill_tokens: int = 0
    decode_blocks: int = 0
    active_requests: int = 0
    # Unique-block accounting (requests started with hashes): references per prompt block,
    # and the blocks no other request can share (expected output, partial last block).
    block_refs: dict[int, int] | None = None
    private_blocks: int = 0

    @property
    def used_blocks(self) -> int:
        """Distinct KV blocks our requests in flight need on this worker."""
        return (len(self.block_refs) if self.block_refs else 0) + self.private_blocks

    def shared_prefix(self, hashes: tuple[int, ...] | list[int]) -> int:
        """How many leading blocks of ``hashes`` a request in flight here already holds.

        Chained hashes make the held blocks of a prompt a prefix (block i's hash covers
        blocks 0..i), so a binary search needs O(log n) lookups, not one per block.
        """
        refs = self.block_refs
        if not refs:
            return 0
        lo, hi = 0, len(hashes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in refs:
                lo = mid
            else:
                hi = mid - 1
        return lo


class LoadTracker:
    """Load of the requests in flight, per worker; ``start``/``first_token``/``finish``."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._active: dict[str, _Active] = {}
        self._workers: dict[int, WorkerLoad] = {}
        self.hold_ms = HOLD_PRIOR_MS  # how long a request holds its KV blocks (EWMA, ms)
        self._hold_measured = False

    def __len__(self) -> int:
        return len(self._active)

    def busy(self) -> dict[int, WorkerLoad]:
        """Load of the workers with requests in flight (read-only view; others are idle)."""
        return self._workers

    def get(self, worker_id: int) -> WorkerLoad:
        return self._workers.get(worker_id) or WorkerLoad()

    def start(
        self,
        request_id: str,
        worker_id: int,
        uncached_tokens: int,
        prompt_tokens: int,
        osl: int,
        hashes: tuple[int, ...] = (),
        *,
        now: float,
    ) -> None:
        """Count a placed request's load; ``now`` (the caller's monotonic seconds) is its start,
        which ``expire`` compares against."""
        if request_id in self._active:  # an id reused while in flight: never leak its load
            self.finish(request_id)
        blocks = request_blocks(prompt_tokens, osl, self.block_size)
        self._active[request_id] = _Active(worker_id, uncached_tokens, blocks, now, hashes)
        load = self._workers.setdefault(worker_id, WorkerLoad())
        load.queued_prefill_tokens += uncached_tokens
        load.decode_blocks += blocks
        load.active_requests += 1
        if hashes:
            refs = load.block_refs
            if refs is None:
                refs = load.block_refs = {}
            for h in hashes:
                refs[h] = refs.get(h, 0) + 1
            load.private_blocks += blocks - len(hashes)

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

    def finish(self, request_id: str, decode_ms: float | None = None) -> None:
        """End a request's load; ``decode_ms``, how long it decoded (output tokens x ITL),
        updates ``hold_ms``."""
        if decode_ms is not None and decode_ms > 0:
            if self._hold_measured:
                self.hold_ms += HOLD_EWMA * (decode_ms - self.hold_ms)
            else:  # the first report replaces the prior
                self.hold_ms, self._hold_measured = decode_ms, True
        active = self._active.pop(request_id, None)
        if active is None:
            return
        load = self._workers[active.worker_id]
        load.queued_prefill_tokens -= active.queued_tokens
        load.decode_blocks -= active.blocks
        load.active_requests -= 1
        if active.hashes and load.block_refs is not None:
            refs = load.block_refs
            for h in active.hashes:
                n = refs.get(h, 0) - 1
                if n > 0:
                    refs[h] = n
                else:
                    refs.pop(h, None)
            load.private_blocks -= active.blocks - len(active.hashes)
        if load.active_requests == 0:
            del self._workers[active.worker_id]
