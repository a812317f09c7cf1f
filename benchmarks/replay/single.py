"""``python -m benchmarks.replay run``: one trace on one cluster, every asked arm, one table."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.replay import agentic
from benchmarks.replay.arms import TraceFile, run_arm
from benchmarks.replay.cluster import ClusterConfig
from benchmarks.replay.metrics import summarize
from benchmarks.replay.report import table
from benchmarks.replay.suite import write_records
from benchmarks.replay.trace import read_mooncake


def load_trace(path: Path, fmt: str, limit: int | None) -> TraceFile:
    if fmt == "mooncake":
        return TraceFile(path, fmt, read_mooncake(path, limit), limit)
    requests = agentic.read_agentic(path)
    if limit is not None:  # a slice keeps whole dependency chains: drop turns of cut parents
        requests = [r for r in requests if r.index < limit]
    return TraceFile(path, fmt, requests, limit)


def main(args: argparse.Namespace) -> int:
    trace = load_trace(args.trace, args.format, args.limit)
    speeds = [float(s) for s in args.speeds.split(",")] if args.speeds else None
    if speeds is not None and len(speeds) != args.workers:
        raise SystemExit(f"--speeds: {len(speeds)} values for {args.workers} workers")
    cluster = ClusterConfig(
        num_workers=args.workers,
        num_gpu_blocks=args.blocks,
        speeds=speeds,
        speedup_ratio=args.speedup,
        arrival_speedup_ratio=args.arrival_speedup,
        kv_event_lag_ms=args.kv_event_lag_ms,
    )
    figures: dict[str, dict] = {}
    for arm in args.arms.split(","):
        t0 = time.perf_counter()
        records, engine = run_arm(arm, trace, cluster, seed=args.seed, progress=True)
        fig = summarize(records, args.workers, args.slo_ttft_ms)
        fig["engine"], fig["wall_s"] = engine, round(time.perf_counter() - t0, 1)
        figures[arm] = fig
        if args.records:
            write_records(args.records / f"{arm}.csv.gz", records)
    # Ratios to Dynamo's kv: its own replay where asked, else the validated port of it.
    base = next((a for a in ("dynamo_kv", "dynamo_kv_port") if a in figures), None)
    print(table(figures, baseline=base))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    return 0
