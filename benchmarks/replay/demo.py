"""The replay half of ``make demo``: the replay suite's agentic pressure case at 8 workers,
ours against Dynamo kv, as one short table (``python -m benchmarks.replay.demo``, ~15 s)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.replay.arms import run_arm
from benchmarks.replay.metrics import summarize
from benchmarks.replay.suite import agentic_case

SLO_TTFT_MS = 2000.0
ROWS = (("ours", "ours"), ("dynamo_kv", "Dynamo kv"))


def demo_table() -> str:
    """Replay the suite's ``agentic`` case at 8 workers with both arms; the table as text."""
    case = agentic_case("agentic", 8, 512)  # as in the suite's cases()
    cluster = case.cluster()
    with tempfile.TemporaryDirectory() as tmp:
        trace = case.make_trace(Path(tmp))
        figs = {}
        for arm, _ in ROWS:
            records, engine = run_arm(arm, trace, cluster)
            figs[arm] = summarize(records, cluster.num_workers, SLO_TTFT_MS) | {"engine": engine}
    n, notes = figs["ours"]["requests"], case.notes
    lines = [
        f"replay: {n:,} requests of {notes['sessions']:,} agent sessions over "
        f"{notes['window_s']:.0f} s on {case.workers} simulated workers x {case.num_gpu_blocks} "
        f"KV blocks (live context {notes['pressure']:.1f}x the cluster's KV), virtual clock",
        f"{'arm':<11}{'TTFT p50':>10}{'p90':>9}{'p99':>9}{'reuse':>8}{'goodput/s':>11}",
    ]
    for arm, label in ROWS:
        f = figs[arm]
        lines.append(
            f"{label:<11}{f['ttft_p50_ms']:>8.0f}ms{f['ttft_p90_ms']:>7.0f}ms"
            f"{f['ttft_p99_ms']:>7.0f}ms{f['reuse']:>8.3f}{f['goodput']:>11.2f}"
        )
    ours, kv = figs["ours"], figs["dynamo_kv"]
    lines.append(
        f"ours / kv: TTFT p50 {ours['ttft_p50_ms'] / kv['ttft_p50_ms']:.2f}x, "
        f"p90 {ours['ttft_p90_ms'] / kv['ttft_p90_ms']:.2f}x, "
        f"p99 {ours['ttft_p99_ms'] / kv['ttft_p99_ms']:.2f}x "
        f"(Dynamo kv run by {'Dynamo' if kv['engine'] == 'dynamo' else 'our port'}'s replay; "
        f"goodput = requests with TTFT <= {SLO_TTFT_MS / 1000:.0f} s per second)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m benchmarks.replay.demo", description=__doc__
    ).parse_args(argv)
    t0 = time.perf_counter()
    print(demo_table())
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
