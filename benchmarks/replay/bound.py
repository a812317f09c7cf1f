"""``python -m benchmarks.replay bound``: how low any router's TTFT could go on a replay case,
as a ratio to ``dynamo_kv``'s TTFT in the same replay.

Every figure is per served request of kv's run (its arrival order), then the percentile:

* ``floor_ideal``: the prefill of the tokens an infinite shared cache would have missed, alone
  on an idle worker of the fastest speed, cut into the cheapest passes
  (``engine.least_prefill_ms``). A strict lower bound: no router's request can wait less than
  zero, compute fewer tokens than the infinite cache misses (a prefix computed for a later
  arrival is computed after this one arrived, on its path), or run faster than the fastest
  worker alone, and a percentile of per-request lower bounds bounds the percentile.
* ``floor_capacity``: the same floor, but the cluster's KV is finite: no cache of the
  cluster's total blocks serves more tokens in all than Belady's offline cache
  (``metrics.hits_offline``). The percentile is the lowest T such that the requests it needs
  at or below T can get there alone on the fastest worker with at most that many hits in all,
  each at most its infinite-cache hit (``capacity_floor``). Strict like ``floor_ideal``.
* ``floor_pooled``: the same with the tokens one LRU of the whole cluster's KV would have
  missed (``metrics.hits_pooled``). Not strict: an offline eviction could keep more than LRU.
* ``kv_pooled``: kv's own TTFT, less the prefill of the tokens kv computed beyond that pooled
  miss (never more than kv computed), at the engine's cost on the worker kv chose, its
  queueing unchanged. What a router with kv's placement and the pool's cache would see;
  generous in the cache, strict in the queue (the saved prefill would also shorten others').
* ``ours_pooled`` (when the records directory has ours' run too): the same cut on ours.

The target holds only where ``floor_ideal`` is below it; ``kv_pooled`` is the estimate a
router that keeps kv's load spread reaches.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.replay.arms import TraceFile, run_arm
from benchmarks.replay.cluster import ClusterConfig
from benchmarks.replay.engine import least_prefill_ms, solo_prefill_ms
from benchmarks.replay.metrics import hits_ideal, hits_offline, hits_pooled
from benchmarks.replay.records import RequestRecord
from benchmarks.replay.suite import RESULTS, Case, cases, read_records, served_prompts

DEFAULT_CASES = ("agentic-8", "agentic-64", "heterogeneous-8")
BOUNDS = ("floor_ideal", "floor_pooled", "kv_pooled")
QUANTILES = (50, 90, 99)


def _pooled_misses(
    cluster: ClusterConfig, trace: TraceFile, records: list[RequestRecord]
) -> tuple[list[RequestRecord], np.ndarray, np.ndarray]:
    """The served records in arrival order with, per request, the prompt tokens an infinite
    cache and a pooled LRU of the cluster's KV would have missed (a full hit still recomputes
    its last block)."""
    order, prompts = served_prompts(cluster, trace, records)
    bs = cluster.block_size
    capacity = cluster.num_gpu_blocks * cluster.num_workers
    n = np.array([r.input_length for r in order], dtype=np.int64)
    cap = ((n - 1) // bs) * bs
    ideal = n - np.minimum(hits_ideal(prompts, bs), cap)
    pooled = n - np.minimum(hits_pooled(prompts, bs, capacity), cap)
    return order, ideal, pooled


def most_tokens(ms: float, speed: float, max_num_batched_tokens: int, limit: int) -> int:
    """The most prompt tokens (up to ``limit``) whose least prefill fits in ``ms``."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if least_prefill_ms(mid, speed, max_num_batched_tokens) <= ms:
            lo = mid
        else:
            hi = mid - 1
    return lo


def capacity_floor(
    tokens: np.ndarray,
    max_hits: np.ndarray,
    total_hits: int,
    q: float,
    speed: float,
    max_num_batched_tokens: int,
) -> float:
    """The lowest T (ms, to 0.1) at which the ``q``-th percentile of TTFT can be <= T: the
    requests ``np.percentile`` needs at or below T (its lower neighbour and all under it) each
    computing no more than fits in T alone, with hits <= ``max_hits`` each and
    <= ``total_hits`` in all (the cheapest requests chosen)."""
    need = int(np.floor(q / 100.0 * (len(tokens) - 1))) + 1
    limit = int(tokens.max())

    def feasible(t: float) -> bool:
        hits = np.maximum(tokens - most_tokens(t, speed, max_num_batched_tokens, limit), 0)
        ok = hits <= max_hits
        if np.count_nonzero(ok) < need:
            return False
        return int(np.sort(hits[ok])[:need].sum()) <= total_hits

    lo, hi = 0.0, least_prefill_ms(limit, speed, max_num_batched_tokens)
    while hi - lo > 0.1:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return hi


def capacity_figures(
    cluster: ClusterConfig, trace: TraceFile, kv: list[RequestRecord]
) -> dict[str, float]:
    """``floor_capacity`` at each quantile, and its ratio to kv's TTFT there."""
    order, ideal_miss, _ = _pooled_misses(cluster, trace, kv)
    _, prompts = served_prompts(cluster, trace, kv)
    capacity = cluster.num_gpu_blocks * cluster.num_workers
    total = int(hits_offline(prompts, cluster.block_size, capacity).sum())
    tokens = np.array([r.input_length for r in order], dtype=np.int64)
    fastest = max(cluster.worker_speed(w) for w in range(cluster.num_workers))
    kv_ttft = np.array([r.ttft_ms for r in order])
    fig: dict[str, float] = {}
    for q in QUANTILES:
        ms = capacity_floor(
            tokens, tokens - ideal_miss, total, q, fastest, cluster.max_num_batched_tokens
        )
        fig[f"p{q}_ms"] = ms
        fig[f"p{q}_ratio"] = ms / float(np.percentile(kv_ttft, q))
    return fig


def pooled_cut(
    cluster: ClusterConfig, order: list[RequestRecord], pooled_miss: np.ndarray
) -> np.ndarray:
    """Each record's TTFT less the prefill of the tokens it computed beyond the pooled miss,
    at the engine's cost alone on its own worker; its queueing unchanged."""
    chunk = cluster.max_num_batched_tokens
    out = np.empty(len(order))
    for i, r in enumerate(order):
        miss = r.input_length - r.reused_tokens
        speed = cluster.worker_speed(r.worker)
        saved = solo_prefill_ms(miss, speed, chunk) - solo_prefill_ms(
            min(int(pooled_miss[i]), miss), speed, chunk
        )
        out[i] = r.ttft_ms - saved
    return out


def request_bounds(
    cluster: ClusterConfig,
    trace: TraceFile,
    kv: list[RequestRecord],
    ours: list[RequestRecord] | None = None,
) -> dict[str, np.ndarray]:
    """Per served request of kv's run: kv's TTFT and every bound's (ms), in arrival order;
    with ``ours``, also ours' TTFT and ours cut to the pooled miss (``ours_pooled``)."""
    order, ideal, pooled = _pooled_misses(cluster, trace, kv)
    fastest = max(cluster.worker_speed(w) for w in range(cluster.num_workers))
    chunk = cluster.max_num_batched_tokens
    out = {
        "dynamo_kv": np.array([r.ttft_ms for r in order]),
        "floor_ideal": np.array([least_prefill_ms(int(m), fastest, chunk) for m in ideal]),
        "floor_pooled": np.array([least_prefill_ms(int(m), fastest, chunk) for m in pooled]),
        "kv_pooled": pooled_cut(cluster, order, pooled),
    }
    if ours is not None:
        o_order, _, o_pooled = _pooled_misses(cluster, trace, ours)
        out["ours"] = np.array([r.ttft_ms for r in o_order])
        out["ours_pooled"] = pooled_cut(cluster, o_order, o_pooled)
    return out


def summarize_bounds(per_request: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """p50/p90/p99 of kv and of every bound, with each bound's ratio to kv's."""
    kv = per_request["dynamo_kv"]
    out: dict[str, dict[str, float]] = {}
    for name, ttft in per_request.items():
        fig = {}
        for q in QUANTILES:
            fig[f"p{q}_ms"] = float(np.percentile(ttft, q))
            fig[f"p{q}_ratio"] = fig[f"p{q}_ms"] / float(np.percentile(kv, q))
        out[name] = fig
    return out


def case_bounds(case: Case, work: Path, records_dir: Path) -> dict[str, dict[str, float]]:
    """Bounds of one suite case on kv's records in ``records_dir`` (replayed if absent)."""
    trace = case.make_trace(work)
    path = records_dir / f"{case.key}-dynamo_kv.csv.gz"
    if path.exists():
        kv = read_records(path, trace)
    else:
        from benchmarks.replay.suite import write_records

        kv, _ = run_arm("dynamo_kv", trace, case.cluster())
        write_records(path, kv)
    ours_path = records_dir / f"{case.key}-ours.csv.gz"
    ours = read_records(ours_path, trace) if ours_path.exists() else None
    figs = summarize_bounds(request_bounds(case.cluster(), trace, kv, ours))
    figs["floor_capacity"] = capacity_figures(case.cluster(), trace, kv)
    return figs


def table(result: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| case | figure | TTFT p50 | p90 | p99 |",
        "|---|---|---|---|---|",
    ]
    for key, figs in result.items():
        for name, f in figs.items():
            cells = [
                f"{f[f'p{q}_ms']:.1f}"
                + ("" if name == "dynamo_kv" else f" ({f[f'p{q}_ratio']:.2f}x)")
                for q in QUANTILES
            ]
            lines.append(f"| {key} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    keep = set((args.only or ",".join(DEFAULT_CASES)).split(","))
    suite = [c for c in cases() if c.key in keep or c.workload in keep]
    records_dir = args.records or RESULTS / "records"
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in suite:
            result[case.key] = case_bounds(case, Path(tmp), records_dir)
    text = table(result)
    print(text)
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / "bound.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    command = " ".join(["python -m benchmarks.replay", *sys.argv[1:]])
    (out / "bound.md").write_text(f"# Replay bound\n\n`{command}`\n\n{text}\n")
    return 0
