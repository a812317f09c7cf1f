"""The suite's picture: TTFT CDF per arm for every case, and each arm's reuse against bounds."""

from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path

import numpy as np

COLORS = {
    "ours": "#1b7837",
    "dynamo_kv": "#2166ac",
    "dynamo_kv_port": "#67a9cf",
    "round_robin": "#999999",
    "dynamo_kv_affinity": "#d6604d",
}


def _ttfts(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        return np.sort(np.array([float(r["ttft_ms"]) for r in csv.DictReader(f)]))


def plot_suite(result: dict, records_dir: Path, out: Path) -> None:
    """One PNG: a TTFT CDF panel per (workload, workers), then a reuse panel for all cases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [(w, n) for w, by_n in result.items() for n in sorted(by_n, key=int)]
    cols = 4
    rows = math.ceil((len(cases) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    flat = axes.ravel()
    for ax, (workload, n) in zip(flat, cases, strict=False):
        for arm in result[workload][n]:
            path = records_dir / f"{workload}-{n}-{arm}.csv.gz"
            if not path.exists():
                continue
            t = _ttfts(path)
            ax.plot(t, np.linspace(0, 1, t.size), label=arm, color=COLORS.get(arm), lw=1.2)
        ax.set_xscale("log")
        ax.set_title(f"{workload}, {n} workers", fontsize=9)
        ax.set_xlabel("TTFT ms (log)", fontsize=8)
        ax.grid(alpha=0.3)
    flat[0].set_ylabel("fraction of requests")
    flat[0].legend(fontsize=7)
    ax = flat[len(cases)]
    labels, width = [f"{w}/{n}" for w, n in cases], 0.8 / 6
    x = np.arange(len(cases))
    arms = list(COLORS)
    for i, arm in enumerate(arms):
        vals = [result[w][n].get(arm, {}).get("reuse", np.nan) for w, n in cases]
        ax.bar(x + i * width, vals, width, color=COLORS[arm], label=arm)
    pooled = [next(iter(result[w][n].values())).get("reuse_pooled_bound", np.nan) for w, n in cases]
    ideal = [next(iter(result[w][n].values())).get("reuse_ideal", np.nan) for w, n in cases]
    ax.scatter(x + 0.4, pooled, marker="_", s=300, color="black", label="pooled-cache bound")
    ax.scatter(x + 0.4, ideal, marker="x", color="black", label="infinite cache")
    ax.set_xticks(x + 0.4, labels, rotation=60, fontsize=7)
    ax.set_title("prefix reuse against the bounds", fontsize=9)
    ax.legend(fontsize=6)
    for extra in flat[len(cases) + 1 :]:
        extra.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
