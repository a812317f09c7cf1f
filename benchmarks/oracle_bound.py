"""How low could TTFT go with a perfect cache? A bound on what any router can win, per arm.

    python -m benchmarks.oracle_bound [benchmarks/results/routing_records.jsonl.gz]

Reads the per-request records of a routing benchmark run and, per workload and arm, fits
client TTFT on the prompt tokens the engine had to compute (least squares,
``ttft = intercept + slope * uncached / 1000``). The slope is what one uncached token costs
on that arm's cluster; the intercept is everything else: the request path (processes,
hops), the decision, and waiting for the running batch. It then takes each request's excess
prefill, the tokens it recomputed beyond what the workload's ideal cache would have held
(``ideal_cached_tokens``: every repeated prefix token hit), off its TTFT at the arm's slope:
the arm's *cache-perfect* TTFT, with its own path and its own placements, but no cache lost.

Why: a routing target such as "agentic TTFT p50 <= 0.7x of Dynamo's kv router" is only
reachable if kv loses enough cache for a better router to win that much back. The
cache-perfect kv arm is kv with every lost token found again; the ratio of its percentiles
to kv's measured ones is the best a router on kv's path could reach by placement of cache
alone. It is an estimate, generous in one way and strict in another: a cluster that
recomputes fewer tokens also queues others less (not modelled: the bound could be a little
lower), while a router that keeps every conversation on its cache also concentrates load on
its homes (not modelled either: ``dynamo_kv_affinity``, near the ideal cache on Dynamo's own
path, measures how much that costs). Comparing the intercepts of two arms shows what their
paths and queueing cost beyond the cache.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.hit_latency import RECORDS, by_arm, load

PERCENTILES = (50, 90, 99)
REFERENCE_ARM = "dynamo_kv"


def bound(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(workload, arm) -> fit, excess prefill, and measured vs cache-perfect TTFT percentiles."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, rs in by_arm(records).items():
        ttft = np.array([r["ttft_ms"] for r in rs], dtype=float)
        cached = np.array([r.get("cached_tokens") or 0 for r in rs], dtype=float)
        ideal = np.array([r.get("ideal_cached_tokens") or 0 for r in rs], dtype=float)
        uncached = np.array([r["prompt_tokens"] for r in rs], dtype=float) - cached
        excess = np.maximum(ideal - cached, 0.0)
        intercept, slope = _fit(uncached / 1000.0, ttft)
        perfect = ttft - max(slope, 0.0) * excess / 1000.0
        out[key] = {
            "n": len(rs),
            "intercept_ms": intercept,
            "slope_ms_per_1k": slope,
            "excess_uncached_mean": float(excess.mean()),
            "ttft": {p: float(np.percentile(ttft, p)) for p in PERCENTILES},
            "perfect": {p: float(np.percentile(perfect, p)) for p in PERCENTILES},
        }
    return out


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares intercept and slope; a flat line when x does not vary."""
    if x.size < 2 or float(np.ptp(x)) == 0.0:
        return float(y.mean()), 0.0
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def table(stats: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Markdown: per arm the fit, the measured and cache-perfect TTFT, and both as ratios to
    the reference arm's measured TTFT in the same workload."""
    head = " | ".join(f"p{p} (perfect)" for p in PERCENTILES)
    ratio_head = " | ".join(f"perfect p{p} / kv" for p in PERCENTILES)
    lines = [
        f"| workload | arm | requests | intercept ms | ms per 1k uncached | excess uncached "
        f"tokens (mean) | {head} | {ratio_head} |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * (2 * len(PERCENTILES)),
    ]
    for (wl, arm), s in sorted(stats.items()):
        ref = stats.get((wl, REFERENCE_ARM))
        cells = " | ".join(f"{s['ttft'][p]:.1f} ({s['perfect'][p]:.1f})" for p in PERCENTILES)
        ratios = " | ".join(
            f"{s['perfect'][p] / ref['ttft'][p]:.2f}x" if ref else "-" for p in PERCENTILES
        )
        lines.append(
            f"| {wl} | {arm} | {s['n']} | {s['intercept_ms']:.1f} | "
            f"{s['slope_ms_per_1k']:.1f} | {s['excess_uncached_mean']:.0f} | {cells} | "
            f"{ratios} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.oracle_bound", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("records", nargs="?", type=Path, default=RECORDS, help=f"default {RECORDS}")
    print(table(bound(load(ap.parse_args(argv).records))))


if __name__ == "__main__":
    main()
