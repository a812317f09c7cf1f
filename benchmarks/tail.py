"""What the TTFT tail is made of: the requests at or above each arm's p99, by cache outcome.

    python -m benchmarks.tail [benchmarks/results/routing_records.jsonl.gz] [--workload agentic]

Reads the per-request records of a routing benchmark run and sorts each arm's tail (TTFT at or
above the arm's pooled p99, the same percentile as the results table) into:

* ``cold``: the workload's ideal cache could hold none of the prompt (the first request of an
  agent type, a new Mooncake conversation): every router pays the full prefill;
* ``lost``: the prompt had a cached prefix somewhere (ideal > 0) and this arm served less than
  90% of it from cache: a routing choice, the only kind a router can remove;
* ``hit``: served from cache as well as the ideal allows; slow because the worker was busy.

Why: the agentic p99 target compares one number that, with ~440 requests, is the 5th-6th
slowest request. Whether that request is a cold start (no router can help), a lost cache
(the router can), or a busy hit (load) says whether the ratio moved because of the routing
or because of the draw.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.hit_latency import RECORDS, by_arm, load

HIT_OF_IDEAL = 0.9


def outcome(r: dict[str, Any]) -> str:
    """``cold``, ``lost`` or ``hit`` for one record (see the module docstring)."""
    ideal = r.get("ideal_cached_tokens") or 0
    if ideal <= 0:
        return "cold"
    return "hit" if (r.get("cached_tokens") or 0) >= HIT_OF_IDEAL * ideal else "lost"


def tails(records: list[dict[str, Any]], q: float = 99.0) -> dict[tuple[str, str], dict[str, Any]]:
    """(workload, arm) -> the arm's pooled TTFT percentile ``q`` and the requests at or above it."""
    groups = by_arm(records, need_prompt=False)
    out = {}
    for key, rs in groups.items():
        cut = float(np.percentile([r["ttft_ms"] for r in rs], q))
        tail = sorted((r for r in rs if r["ttft_ms"] >= cut), key=lambda r: -r["ttft_ms"])
        out[key] = {
            "n": len(rs),
            "cut_ms": cut,
            "tail": tail,
            "classes": Counter(outcome(r) for r in tail),
        }
    return out


def table(stats: dict[tuple[str, str], dict[str, Any]]) -> str:
    header = (
        "| workload | arm | requests | TTFT p99 | tail: cold / lost / hit | tail requests "
        "(TTFT ms, outcome, cached / ideal tokens) |"
    )
    lines = [header, "|---|---|---:|---:|---|---|"]
    for (wl, arm), s in sorted(stats.items()):
        c = s["classes"]
        reqs = ", ".join(
            f"{r['ttft_ms']:.0f} {outcome(r)} {r.get('cached_tokens') or 0}/"
            f"{r.get('ideal_cached_tokens') or 0}"
            for r in s["tail"]
        )
        lines.append(
            f"| {wl} | {arm} | {s['n']} | {s['cut_ms']:.1f} | "
            f"{c['cold']} / {c['lost']} / {c['hit']} | {reqs} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="?", type=Path, default=RECORDS)
    ap.add_argument("--workload", help="only this workload")
    ap.add_argument("--q", type=float, default=99.0, help="percentile that starts the tail")
    args = ap.parse_args()
    records = [
        r for r in load(args.records) if args.workload is None or r["workload"] == args.workload
    ]
    print(table(tails(records, args.q)))


if __name__ == "__main__":
    main()
