"""Async signal source: Dynamo's KvRouter (overlap from worker KV events) + our load tracker.

One ``KvRouter.get_potential_loads`` call per decision. The processor forwards requests with
``client.direct`` (so cancellation reaches the worker), which means the KvRouter tracks no
load of ours: its ``potential_prefill_tokens`` is exactly this prompt's uncached tokens on
each worker, i.e. the overlap, and its ``potential_decode_blocks`` this prompt's own blocks.
The queued prefill, decode blocks and in-flight count of the requests we placed come from
``router.load.LoadTracker`` and are added here, giving the same quantities Dynamo's cost
function uses (potential prefill incl. queue, potential decode blocks).
"""

from __future__ import annotations

from typing import Any

from router.load import LoadTracker
from router.signals import WorkerSignals, signals_from_potential_loads


class KvSignalSource:
    """Builds ``WorkerSignals`` for one prompt from a ``dynamo.llm.KvRouter`` and our load."""

    def __init__(self, kv_router: Any, load: LoadTracker, capacity_blocks: int) -> None:
        self._kv = kv_router
        self._load = load
        self._capacity_blocks = capacity_blocks

    async def signals(
        self, token_ids: list[int], live: frozenset[int] | None = None
    ) -> tuple[WorkerSignals, dict[int, int]]:
        """Signals for ``token_ids`` over the live workers; also per-worker uncached tokens."""
        rows = await self._kv.get_potential_loads(token_ids)
        bs = self._load.block_size
        n = len(token_ids)
        adjusted: list[dict[str, Any]] = []
        overlap: dict[int, int] = {}
        uncached: dict[int, int] = {}
        inflight: dict[int, int] = {}
        for row in rows:
            wid = int(row["worker_id"])
            if live is not None and wid not in live:
                continue
            own = int(row["potential_prefill_tokens"])
            ours = self._load.get(wid)
            overlap[wid] = max(overlap.get(wid, 0), (n - own) // bs)
            uncached[wid] = min(uncached.get(wid, own), own)
            inflight[wid] = ours.active_requests
            adjusted.append(
                {
                    "worker_id": wid,
                    "dp_rank": row.get("dp_rank", 0),
                    "potential_prefill_tokens": own + ours.queued_prefill_tokens,
                    "potential_decode_blocks": int(row["potential_decode_blocks"])
                    + ours.decode_blocks,
                    "active_requests": ours.active_requests,
                }
            )
        signals = signals_from_potential_loads(
            adjusted,
            inflight,
            None,
            overlap,
            None,
            default_capacity_blocks=self._capacity_blocks,
        )
        return signals, uncached
