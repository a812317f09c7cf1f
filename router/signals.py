"""Per-decision worker signals: what the router knows about each worker, as numpy arrays.

``WorkerSignals`` holds arrays aligned with ``worker_ids`` (sorted, so decisions are
reproducible), plus the array helpers used to build them. They are built in one place,
``router.kv_signals.signals_from_rows``, from the rows of one ``KvRouter.get_potential_loads``
call (processor/routing.py) and our own load (router/load.py).

Data-parallel ranks: Dynamo returns one row per ``(worker_id, dp_rank)``. We aggregate per
worker_id because we route to a worker: the request lands on one rank, so its prefill
waits behind the *least* loaded rank (min of ``potential_prefill_tokens``) and its cache hit
is the best rank's (max overlap); decode blocks and active requests are worker totals
(sum). With dp_size = 1 (the usual case) this is the identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np


@dataclass(slots=True)
class WorkerSignals:
    """Arrays of shape (W,) aligned with ``worker_ids``.

    ``overlap_blocks``: device KV blocks of this prompt already cached on the worker (from KV
    events). ``potential_prefill_tokens``: Dynamo's potential prefill, i.e. this request's uncached
    tokens plus prefill already queued there. ``decode_blocks`` and ``active_requests`` include the
    requests we placed (router/load.py). ``used_blocks`` / ``shared_blocks``: distinct KV blocks
    our requests in flight hold on the worker, and how many leading blocks of this prompt are
    among them (router/load.py; None unless the request carried block hashes). ``hold_ms``:
    how long a request holds its KV blocks, measured (router/load.py).
    """

    worker_ids: np.ndarray
    overlap_blocks: np.ndarray
    potential_prefill_tokens: np.ndarray
    decode_blocks: np.ndarray
    active_requests: np.ndarray
    capacity_blocks: np.ndarray
    used_blocks: np.ndarray | None = None
    shared_blocks: np.ndarray | None = None
    hold_ms: float = 0.0

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
        capacity_blocks: Iterable[float] | float = 16384,
    ) -> WorkerSignals:
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
            capacity_blocks=arr(capacity_blocks),
        )


def aggregate_ranks(
    worker_ids: np.ndarray, prefill: np.ndarray, *summed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """Per-(worker, dp_rank) columns -> per-worker columns, sorted by worker id.

    Returns ``(ids, prefill_min, [sum of each summed column], ranks_per_worker)``: the
    prefill is the least loaded rank's (min), the other columns are worker totals (sum).
    With one rank per worker (the usual case) this is only a sort.
    """
    order = worker_ids.argsort(kind="stable")
    ids = worker_ids[order]
    n = ids.shape[0]
    same_as_previous = ids[1:] == ids[:-1]
    if not np.count_nonzero(same_as_previous):
        return ids, prefill[order], [c[order] for c in summed], np.ones(n)
    starts = np.flatnonzero(np.concatenate(([True], ~same_as_previous)))
    return (
        ids[starts],
        np.minimum.reduceat(prefill[order], starts),
        [np.add.reduceat(c[order], starts) for c in summed],
        np.diff(starts, append=n).astype(np.float64),
    )


def constant(n: int, value: float) -> np.ndarray:
    """``np.full(n, value)`` without its Python-level overhead (a few µs per call)."""
    out = np.empty(n)
    out.fill(value)
    return out


def aligned(
    ids: list[int] | np.ndarray, values: Mapping[int, float] | None, default: float = 0.0
) -> np.ndarray:
    """``[values.get(w, default) for w in ids]`` as a float array, without a Python loop."""
    n = len(ids)
    if not values:
        return constant(n, default)
    if isinstance(ids, np.ndarray):
        ids = ids.tolist()
    return np.fromiter(map(values.get, ids, repeat(default)), np.float64, n)
