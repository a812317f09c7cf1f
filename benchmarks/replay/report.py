"""Tables of replay figures: one row per arm, ratios against a baseline arm."""

from __future__ import annotations

COLUMNS = (
    ("TTFT p50", "ttft_p50_ms", "ms"),
    ("p90", "ttft_p90_ms", "ms"),
    ("p99", "ttft_p99_ms", "ms"),
    ("ITL p99", "itl_p99_ms", "ms"),
    ("E2E p50", "e2e_p50_ms", "ms"),
    ("E2E p99", "e2e_p99_ms", "ms"),
    ("reuse", "reuse", ""),
    ("goodput", "goodput", "/s"),
)


def _fmt(v: float, unit: str) -> str:
    if unit == "ms":
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    if unit == "":
        return f"{v:.3f}"
    return f"{v:.2f}"


def table(arms: dict[str, dict], baseline: str | None = None) -> str:
    """Markdown table; with ``baseline``, each latency cell also shows its ratio to it."""
    head = "| arm | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    base = arms.get(baseline) if baseline else None
    for name, fig in arms.items():
        cells = []
        for _, key, unit in COLUMNS:
            v = fig.get(key)
            if v is None:
                cells.append("")
                continue
            cell = _fmt(v, unit)
            if base is not None and name != baseline and unit == "ms" and base.get(key):
                cell += f" ({v / base[key]:.2f}x)"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first = next(iter(arms.values()), {})
    if "reuse_pooled_bound" in first:
        lines.append(
            f"\nreuse bounds: pooled cache {first['reuse_pooled_bound']:.3f}, "
            f"infinite cache {first['reuse_ideal']:.3f}"
        )
    return "\n".join(lines)


def headline(suite: dict, baseline: str = "dynamo_kv") -> str:
    """One row per (workload, workers): ours against ``baseline`` as ratios, reuse against the
    references. The README's Benchmarks section leads with it."""
    lines = [
        "| workload | workers | TTFT p50 | p90 | p99 | goodput | reuse ours / kv "
        "| pooled bound | kv run by |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, by_n in suite.items():
        for n in sorted(by_n, key=int):
            arms = by_n[n]
            ours, base = arms.get("ours"), arms.get(baseline)
            if not ours or not base:
                continue
            ratios = [
                f"{ours[k] / base[k]:.2f}x" if base.get(k) else "-"
                for k in ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "goodput")
            ]
            engine = "Dynamo's replay" if base.get("engine") == "dynamo" else "our port"
            lines.append(
                f"| {workload} | {n} | {' | '.join(ratios)} | {ours['reuse']:.3f} / "
                f"{base['reuse']:.3f} | {ours.get('reuse_pooled_bound', float('nan')):.3f} "
                f"| {engine} |"
            )
    return "\n".join(lines)
