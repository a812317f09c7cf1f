"""The replay half of ``make demo``: an agentic pressure trace at 8 workers, ours against
Dynamo kv, as one short table (``python -m benchmarks.replay.demo``)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.replay import agentic
from benchmarks.replay.arms import TraceFile, run_arm
from benchmarks.replay.cluster import ClusterConfig
from benchmarks.replay.metrics import summarize

SLO_TTFT_MS = 2000.0
ROWS = (("ours", "ours"), ("dynamo_kv", "Dynamo kv"))


def demo_table(seed: int = 0) -> str:
    """Replay the demo preset with both arms; returns the table as text."""
    preset = agentic.demo_preset(seed)
    cluster = ClusterConfig(num_workers=preset.workers, num_gpu_blocks=preset.num_gpu_blocks)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.jsonl"
        agentic.write_agentic(path, agentic.generate_agentic(preset.seed, preset.params))
        trace = TraceFile(path, "agentic", agentic.read_agentic(path))
        figs = {}
        for arm, _ in ROWS:
            records, engine = run_arm(arm, trace, cluster, seed=seed)
            figs[arm] = summarize(records, cluster.num_workers, SLO_TTFT_MS) | {"engine": engine}
    n = figs["ours"]["requests"]
    lines = [
        f"replay: {n} requests of {preset.params.num_sessions} agent sessions on "
        f"{preset.workers} simulated workers x {preset.num_gpu_blocks} KV blocks "
        f"(live context {preset.pressure:.1f}x the cluster's KV), virtual clock",
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


if __name__ == "__main__":
    t0 = time.perf_counter()
    print(demo_table())
    print(f"({time.perf_counter() - t0:.1f} s)")
