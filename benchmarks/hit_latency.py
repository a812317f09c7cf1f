"""Split TTFT by cache outcome: how much of an arm's latency is routing, how much is path.

    python -m benchmarks.hit_latency [benchmarks/results/routing_records.jsonl.gz]

Reads the per-request records of a routing benchmark run and prints, per workload and arm,
the TTFT median of requests that were served almost entirely from cache (>= 90% of the
prompt cached: the routing could not have done better for them) and of requests that
mostly missed (< 50% cached), with their counts. Two arms with the same hit ratio and the
same hit count differ on hits only by their request path (processes, hops), not by routing.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

RECORDS = Path(__file__).resolve().parent / "results" / "routing_records.jsonl.gz"
HIT, MISS = 0.9, 0.5


def load(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def by_arm(
    records: list[dict[str, Any]], need_prompt: bool = True
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(workload, arm) -> its successful records with a TTFT (and, with ``need_prompt``, a
    prompt length: the analyses that divide by it)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if (
            r.get("status") == 200
            and r.get("ttft_ms") is not None
            and (r.get("prompt_tokens") or not need_prompt)
        ):
            groups[(r["workload"], r["arm"])].append(r)
    return groups


def split(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(workload, arm) -> counts and TTFT medians of hits, misses and all requests."""
    out = {}
    for key, rs in by_arm(records).items():
        frac = np.array([(r.get("cached_tokens") or 0) / r["prompt_tokens"] for r in rs])
        ttft = np.array([r["ttft_ms"] for r in rs])
        hits, misses = ttft[frac >= HIT], ttft[frac < MISS]
        out[key] = {
            "n": len(rs),
            "hits": int(hits.size),
            "misses": int(misses.size),
            "ttft_p50": float(np.median(ttft)),
            "hit_ttft_p50": float(np.median(hits)) if hits.size else None,
            "miss_ttft_p50": float(np.median(misses)) if misses.size else None,
        }
    return out


def table(stats: dict[tuple[str, str], dict[str, Any]]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [
        "| workload | arm | requests | hits (>= 90% cached) | hit TTFT p50 | misses (< 50%) "
        "| miss TTFT p50 | all TTFT p50 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (wl, arm), s in sorted(stats.items()):
        lines.append(
            f"| {wl} | {arm} | {s['n']} | {s['hits']} | {ms(s['hit_ttft_p50'])} | "
            f"{s['misses']} | {ms(s['miss_ttft_p50'])} | {ms(s['ttft_p50'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.hit_latency", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("records", nargs="?", type=Path, default=RECORDS, help=f"default {RECORDS}")
    print(table(split(load(ap.parse_args(argv).records))))


if __name__ == "__main__":
    main()
