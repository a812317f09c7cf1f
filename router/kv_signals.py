"""Worker signals from Dynamo's KvRouter rows (overlap from worker KV events) + our load.

The caller makes one ``KvRouter.get_potential_loads`` call per decision (processor/routing.py). The
processor forwards requests with ``client.direct``, so the KvRouter tracks no load of ours
(router/load.py says why): its ``potential_prefill_tokens`` is exactly this prompt's uncached tokens
on each worker, i.e. the overlap, and its ``potential_decode_blocks`` this prompt's own blocks. The
queued prefill, decode blocks and in-flight count of the requests we placed come from
``router.load.LoadTracker`` and are added here, giving the same quantities Dynamo's cost function
uses (potential prefill incl. queue, potential decode blocks).
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from router.load import LoadTracker
from router.signals import WorkerSignals, aggregate_ranks, aligned

_WORKER_ID = itemgetter("worker_id")
_PREFILL = itemgetter("potential_prefill_tokens")
_DECODE = itemgetter("potential_decode_blocks")
_LOAD_FIELDS = tuple(
    attrgetter(f) for f in ("queued_prefill_tokens", "decode_blocks", "active_requests")
)


def signals_from_rows(
    rows: list[dict[str, Any]],
    prompt_tokens: int,
    load: LoadTracker,
    capacity_blocks: int,
    live: frozenset[int] | None = None,
    reported_capacity: Mapping[int, int] | None = None,
    block_hashes: tuple[int, ...] | list[int] | None = None,
) -> tuple[WorkerSignals, dict[int, int]]:
    """``get_potential_loads`` rows for one prompt + our load -> (signals, uncached tokens).

    Per worker, aggregating its dp ranks: overlap = the best rank's cached blocks (>= 0),
    prefill = the least loaded rank's uncached tokens + our queued prefill there,
    decode = Dynamo's decode blocks summed over ranks + ours per rank, active = ours per
    rank. Vectorized: no Python loop over workers beyond reading Dynamo's rows.
    ``reported_capacity`` (blocks per worker from the workers' own cards) overrides
    ``capacity_blocks`` where present. With ``block_hashes`` (the prompt's chained block
    hashes, which the processor sends with every prompt it routes) the signals also carry each
    worker's distinct blocks in use by our requests and how many of this prompt's leading
    blocks they already hold (router/load.py).
    """
    if live is not None and not live.issuperset(map(_WORKER_ID, rows)):
        rows = [row for row in rows if row["worker_id"] in live]
    n_rows = len(rows)
    ids, own, (dynamo_decode,), ranks = aggregate_ranks(  # columns read by C-level maps
        np.fromiter(map(_WORKER_ID, rows), np.uint64, n_rows),
        np.fromiter(map(_PREFILL, rows), np.int64, n_rows),
        np.fromiter(map(_DECODE, rows), np.float64, n_rows),
    )
    n = ids.shape[0]
    # Our load (queued prefill, decode blocks, in flight) on the workers where we have
    # requests in flight; zero elsewhere.
    ours = np.zeros((len(_LOAD_FIELDS), n))
    queued, ours_decode, ours_active = ours
    busy = load.busy()
    used = shared = None
    if block_hashes is not None:
        used, shared = np.zeros(n), np.zeros(n)
    if busy and n:
        keys = np.fromiter(busy, np.uint64, len(busy))
        at = np.minimum(ids.searchsorted(keys), n - 1)
        hit = ids[at] == keys
        loads = list(busy.values())
        for row, field in zip(ours, _LOAD_FIELDS, strict=True):
            row[at[hit]] = np.fromiter(map(field, loads), np.float64, len(loads))[hit]
        if used is not None and shared is not None and block_hashes is not None:
            for i, wl, ok in zip(at.tolist(), loads, hit.tolist(), strict=True):
                if ok:
                    used[i] = wl.used_blocks
                    shared[i] = wl.shared_prefix(block_hashes)
    signals = WorkerSignals(
        worker_ids=ids,
        overlap_blocks=np.maximum((prompt_tokens - own) // load.block_size, 0.0),
        potential_prefill_tokens=own + queued,
        decode_blocks=dynamo_decode + ranks * ours_decode,
        active_requests=ranks * ours_active,
        capacity_blocks=aligned(ids, reported_capacity, capacity_blocks),
        used_blocks=used,
        shared_blocks=shared,
        hold_ms=load.hold_ms,
    )
    return signals, dict(zip(ids.tolist(), own.tolist(), strict=True))
