"""Figures of one replayed arm, and the two reuse references every arm is read against.

* ``summarize``: TTFT mean/p50/p90/p99, ITL p50/p99, E2E p50/p99, throughput, goodput at a
  TTFT SLO, prefix reuse and load imbalance, from the per-request records.
* ``reuse_ideal``: an infinite cache shared by all workers; every block ever computed stays.
* ``reuse_pooled``: one LRU cache of the whole cluster's capacity, fed in arrival order; what a
  router could keep if the cluster's KV were one pool (no split across workers).
* ``hits_offline``: the most blocks any cache of that capacity could hold when asked
  (Belady's furthest-next-use eviction), an upper bound on every router's total reuse.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

from benchmarks.replay.records import RequestRecord


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else float("nan")


def summarize(records: Sequence[RequestRecord], num_workers: int, slo_ttft_ms: float) -> dict:
    """One arm's figures; goodput = requests with TTFT within the SLO per second of the run.

    Requests refused by admission count in ``refused`` and as misses of the SLO (goodput,
    goodput_frac); latency percentiles are of the served requests."""
    every = records
    records = [r for r in records if not r.refused]
    ttft = np.fromiter((r.ttft_ms for r in records), float, len(records))
    e2e = np.fromiter((r.e2e_ms for r in records), float, len(records))
    itl = np.array([r.itl_ms for r in records if r.itl_ms is not None], float)
    start = min((r.arrival_ms for r in every), default=0.0)
    end = max((r.finish_ms for r in every), default=0.0)
    span_s = max(end - start, 1e-9) / 1000.0
    inputs = sum(r.input_length for r in records)
    reused = sum(r.reused_tokens for r in records)
    work = np.zeros(num_workers)
    for r in records:
        work[r.worker] += r.input_length - r.reused_tokens + r.output_length
    return {
        "requests": len(every),
        "refused": len(every) - len(records),
        "ttft_mean_ms": float(ttft.mean()) if ttft.size else float("nan"),
        "ttft_p50_ms": _pct(ttft, 50),
        "ttft_p90_ms": _pct(ttft, 90),
        "ttft_p99_ms": _pct(ttft, 99),
        "itl_p50_ms": _pct(itl, 50),
        "itl_p99_ms": _pct(itl, 99),
        "e2e_p50_ms": _pct(e2e, 50),
        "e2e_p99_ms": _pct(e2e, 99),
        "throughput_tok_s": sum(r.output_length for r in records) / span_s,
        "goodput": float(np.count_nonzero(ttft <= slo_ttft_ms)) / span_s,
        "goodput_frac": float(np.count_nonzero(ttft <= slo_ttft_ms)) / max(len(every), 1),
        "slo_ttft_ms": slo_ttft_ms,
        "reuse": reused / inputs if inputs else 0.0,
        "imbalance": float(work.max() / work.mean()) if work.sum() else 1.0,
        "span_s": span_s,
    }


def _leading_hits(blocks: np.ndarray, present) -> int:
    n = 0
    for b in blocks.tolist():
        if b not in present:
            break
        n += 1
    return n


def hits_ideal(prompts: Iterable[tuple[int, np.ndarray]], block_size: int) -> np.ndarray:
    """Per prompt, the tokens an infinite shared cache would serve: ``prompts`` are
    (input tokens, block hashes) in arrival order."""
    seen: set[int] = set()
    out = []
    for tokens, blocks in prompts:
        out.append(min(_leading_hits(blocks, seen) * block_size, tokens))
        seen.update(blocks.tolist())
    return np.array(out, dtype=np.int64)


def hits_pooled(
    prompts: Iterable[tuple[int, np.ndarray]], block_size: int, capacity_blocks: int
) -> np.ndarray:
    """Per prompt, the tokens one LRU cache of ``capacity_blocks`` (the cluster's total) would
    serve, fed in arrival order."""
    lru: OrderedDict[int, None] = OrderedDict()
    out = []
    for tokens, blocks in prompts:
        out.append(min(_leading_hits(blocks, lru) * block_size, tokens))
        for b in blocks.tolist():
            if b in lru:
                lru.move_to_end(b)
            else:
                lru[b] = None
        while len(lru) > capacity_blocks:
            lru.popitem(last=False)
    return np.array(out, dtype=np.int64)


def _share(prompts: list[tuple[int, np.ndarray]], hits: np.ndarray) -> float:
    total = sum(tokens for tokens, _ in prompts)
    return float(hits.sum()) / total if total else 0.0


def reuse_ideal(prompts: Iterable[tuple[int, np.ndarray]], block_size: int) -> float:
    """Reuse with an infinite shared cache (``hits_ideal`` over all prompts)."""
    prompts = list(prompts)
    return _share(prompts, hits_ideal(prompts, block_size))


def reuse_pooled(
    prompts: Iterable[tuple[int, np.ndarray]], block_size: int, capacity_blocks: int
) -> float:
    """Reuse with one LRU cache of ``capacity_blocks`` (``hits_pooled`` over all prompts)."""
    prompts = list(prompts)
    return _share(prompts, hits_pooled(prompts, block_size, capacity_blocks))


def hits_offline(
    prompts: Sequence[tuple[int, np.ndarray]], block_size: int, capacity_blocks: int
) -> np.ndarray:
    """Per prompt, the tokens of its blocks (leading or not) that an offline cache of
    ``capacity_blocks`` holds when it arrives: Belady's policy, which evicts the block used
    furthest in the future and never caches a block used never again or later than all it
    holds. It maximizes block hits over every cache of that size fed in arrival order, and a
    prefix hit is a block hit, so the sum bounds any cluster of that total KV (copies of a
    block on two workers only take room). Only the sum is a bound, not each prompt's share."""
    refs = [b for _, blocks in prompts for b in blocks.tolist()]
    never = len(refs)
    nxt = [never] * len(refs)
    last: dict[int, int] = {}
    for i in range(len(refs) - 1, -1, -1):
        nxt[i] = last.get(refs[i], never)
        last[refs[i]] = i
    cached: dict[int, int] = {}  # block -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, block), stale entries skipped
    out = np.zeros(len(prompts), dtype=np.int64)
    i = 0
    for p, (tokens, blocks) in enumerate(prompts):
        hit = 0
        for _ in range(len(blocks)):
            b, n = refs[i], nxt[i]
            i += 1
            if b in cached:
                hit += 1
            elif n == never:
                continue
            elif len(cached) >= capacity_blocks:
                while -heap[0][0] != cached.get(heap[0][1]):
                    heapq.heappop(heap)
                if -heap[0][0] <= n:
                    continue
                del cached[heapq.heappop(heap)[1]]
            if n == never:
                del cached[b]
            else:
                cached[b] = n
                heapq.heappush(heap, (-n, b))
        out[p] = min(hit * block_size, tokens)
    return out
