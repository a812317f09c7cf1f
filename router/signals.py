"""Per-decision worker signals: what the router knows about each worker, as numpy arrays.

The pure part (this file's top half) turns Dynamo's ``KvRouter.get_potential_loads`` rows
and ``get_overlap_scores`` rows into a ``WorkerSignals`` of arrays aligned with
``worker_ids`` (sorted, so decisions are reproducible). The async adapter that calls the
KvRouter lives in the marked section at the bottom (lead engineer).

Data-parallel ranks: Dynamo returns one row per ``(worker_id, dp_rank)``. We aggregate per
worker_id because we route to a worker: the request lands on one rank, so its prefill
waits behind the *least* loaded rank (min of ``potential_prefill_tokens``) and its cache hit
is the best rank's (max overlap); decode blocks and active requests are worker totals
(sum). With dp_size = 1 (the usual case) this is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np


@dataclass(slots=True)
class WorkerSignals:
    """Arrays of shape (W,) aligned with ``worker_ids``.

    ``overlap_blocks``: device KV blocks of this prompt already cached on the worker (from
    KV events). ``potential_prefill_tokens``: Dynamo's potential prefill, i.e. this request's
    uncached tokens plus prefill already queued there. ``reserved_blocks``: blocks pinned by
    live conversations on the worker; None lets the Router fill it from its prefix table.
    """

    worker_ids: np.ndarray
    overlap_blocks: np.ndarray
    potential_prefill_tokens: np.ndarray
    decode_blocks: np.ndarray
    active_requests: np.ndarray
    inflight: np.ndarray
    capacity_blocks: np.ndarray
    reserved_blocks: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.worker_ids.shape[0])

    @classmethod
    def build(
        cls,
        worker_ids: Iterable[int],
        *,
        overlap_blocks: Iterable[float] | None = None,
        potential_prefill_tokens: Iterable[float] | None = None,
        decode_blocks: Iterable[float] | None = None,
        active_requests: Iterable[float] | None = None,
        inflight: Iterable[float] | None = None,
        capacity_blocks: Iterable[float] | float = 16384,
        reserved_blocks: Iterable[float] | None = None,
    ) -> "WorkerSignals":
        """Convenience constructor (tests, simulations): missing arrays are zeros."""
        ids = np.asarray(list(worker_ids), dtype=np.uint64)  # Dynamo instance ids are u64
        n = ids.shape[0]

        def arr(v: Any) -> np.ndarray:
            if v is None:
                return np.zeros(n)
            if np.isscalar(v):
                return np.full(n, float(v))
            a = np.asarray(list(v) if not isinstance(v, np.ndarray) else v, dtype=np.float64)
            if a.shape != (n,):
                raise ValueError(f"expected shape ({n},), got {a.shape}")
            return a

        return cls(
            worker_ids=ids,
            overlap_blocks=arr(overlap_blocks),
            potential_prefill_tokens=arr(potential_prefill_tokens),
            decode_blocks=arr(decode_blocks),
            active_requests=arr(active_requests),
            inflight=arr(inflight),
            capacity_blocks=arr(capacity_blocks),
            reserved_blocks=None if reserved_blocks is None else arr(reserved_blocks),
        )


def overlap_from_scores(scores: Mapping[str, Any]) -> dict[int, int]:
    """``get_overlap_scores`` result -> {worker_id: device overlap blocks} (max over ranks)."""
    out: dict[int, int] = {}
    for row in scores.get("workers", ()):
        wid = int(row["worker_id"])
        blocks = int(row.get("device_blocks", 0) or 0)
        if blocks > out.get(wid, -1):
            out[wid] = blocks
    return out


def signals_from_potential_loads(
    loads: list[dict[str, Any]],
    inflight: Mapping[int, int],
    reserved: Optional[Mapping[int, int]] = None,
    overlap: Optional[Mapping[int, int]] = None,
    capacity: Optional[Mapping[int, int]] = None,
    default_capacity_blocks: int = 16384,
) -> WorkerSignals:
    """Aggregate Dynamo's per-(worker, dp_rank) load rows into per-worker arrays.

    ``loads``: rows with worker_id, dp_rank, potential_prefill_tokens,
    potential_decode_blocks, active_requests. ``inflight``: our own in-flight count per
    worker. ``reserved``: pinned blocks per worker (PrefixTable.reserved_by_worker()); None
    lets the Router fill it. ``overlap``: device overlap blocks per worker
    (``overlap_from_scores``). ``capacity``: KV blocks per worker when known.
    """
    prefill: dict[int, float] = {}
    decode: dict[int, float] = {}
    active: dict[int, float] = {}
    for row in loads:
        wid = int(row["worker_id"])
        p = float(row.get("potential_prefill_tokens", 0) or 0)
        prefill[wid] = min(prefill.get(wid, p), p)
        decode[wid] = decode.get(wid, 0.0) + float(row.get("potential_decode_blocks", 0) or 0)
        active[wid] = active.get(wid, 0.0) + float(row.get("active_requests", 0) or 0)
    ids = sorted(prefill)
    overlap = overlap or {}
    capacity = capacity or {}
    return WorkerSignals(
        worker_ids=np.asarray(ids, dtype=np.uint64),  # Dynamo instance ids are u64
        overlap_blocks=np.fromiter((overlap.get(w, 0) for w in ids), np.float64, len(ids)),
        potential_prefill_tokens=np.fromiter((prefill[w] for w in ids), np.float64, len(ids)),
        decode_blocks=np.fromiter((decode[w] for w in ids), np.float64, len(ids)),
        active_requests=np.fromiter((active[w] for w in ids), np.float64, len(ids)),
        inflight=np.fromiter((inflight.get(w, 0) for w in ids), np.float64, len(ids)),
        capacity_blocks=np.fromiter(
            (capacity.get(w, default_capacity_blocks) for w in ids), np.float64, len(ids)
        ),
        reserved_blocks=None
        if reserved is None
        else np.fromiter((reserved.get(w, 0) for w in ids), np.float64, len(ids)),
    )


# =====================================================================================
# Async KvRouter adapter -- LEAD ENGINEER WRITES THIS PART.
#
# Intended shape: an object holding a ``dynamo.llm.KvRouter`` that, per request, awaits
# ``get_potential_loads(token_ids)`` and ``get_overlap_scores(token_ids)`` (concurrently)
# and returns ``signals_from_potential_loads(loads, router.inflight(), None,
# overlap_from_scores(scores), capacity)``. Dynamo imports belong here, not above.
# =====================================================================================
