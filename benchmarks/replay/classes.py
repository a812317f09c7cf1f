"""A replay's requests by the client's latency class, per arm: does admission serve the
urgent ones first?

    python -m benchmarks.replay.classes --case overload-8 [--records DIR] [--seed N]

Why: under overload the router holds new conversations' first requests in a queue ordered by
priority, then latency sensitivity, then arrival (router/admission.py). What that order buys
shows only per class: the share of each class's requests served within the SLO (goodput
share), how many were refused, and the served TTFT. Reads the records a suite run wrote
(``python -m benchmarks.replay suite [--heldout] --only CASE``) for ``ours`` and ``dynamo_kv``.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.replay.records import RequestRecord
from benchmarks.replay.suite import RESULTS, Case, cases, heldout_cases, read_records
from benchmarks.replay.trace import TraceRequest

ARMS = ("ours", "dynamo_kv")


def request_class(request: TraceRequest) -> tuple[int, float]:
    """(priority, latency sensitivity) as the client sent them; absent counts as 0."""
    h = request.hints
    if h is None:
        return (0, 0.0)
    return (h.priority or 0, h.latency_sensitivity or 0.0)


def by_class(
    trace: list[TraceRequest], records: list[RequestRecord], slo_ms: float
) -> dict[tuple[int, float], dict[str, float]]:
    """Per class: requests, refused, goodput share (served within ``slo_ms``), served TTFT
    p50 and p90 (ms; NaN when nothing was served)."""
    cls = {t.index: request_class(t) for t in trace}
    groups: dict[tuple[int, float], list[RequestRecord]] = defaultdict(list)
    for r in records:
        groups[cls[r.index]].append(r)
    out = {}
    for key in sorted(groups):
        rs = groups[key]
        served = np.array([r.ttft_ms for r in rs if not r.refused])
        good = int(np.sum(served <= slo_ms))
        p50, p90 = np.percentile(served, (50, 90)) if served.size else (np.nan, np.nan)
        out[key] = {
            "requests": len(rs),
            "refused": len(rs) - served.size,
            "goodput_share": good / len(rs),
            "ttft_p50_ms": float(p50),
            "ttft_p90_ms": float(p90),
        }
    return out


def table(figures: dict[str, dict[tuple[int, float], dict[str, float]]]) -> str:
    lines = [
        "| arm | priority | latency sensitivity | requests | refused | within SLO | "
        "served TTFT p50 ms | p90 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, classes in figures.items():
        for (prio, sens), f in classes.items():
            lines.append(
                f"| {arm} | {prio} | {sens:g} | {f['requests']} | {f['refused']} | "
                f"{f['goodput_share']:.3f} | {f['ttft_p50_ms']:,.0f} | {f['ttft_p90_ms']:,.0f} |"
            )
    return "\n".join(lines)


def find_case(key: str, seed: int) -> Case:
    for case in cases(seed=seed) + heldout_cases(seed):
        if case.key == key:
            return case
    raise SystemExit(f"--case: no suite or held-out case {key!r} (e.g. overload-8)")


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.replay.classes",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument("--case", default="overload-8", help="a suite or held-out case key")
    ap.add_argument("--records", type=Path, default=RESULTS / "records")
    ap.add_argument("--seed", type=int, default=0, help="the seed the suite ran with")
    args = ap.parse_args()
    case = find_case(args.case, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        trace = case.make_trace(Path(tmp))
        figures = {}
        for arm in ARMS:
            path = args.records / f"{case.key}-{arm}.csv.gz"
            if not path.exists():
                raise SystemExit(f"{path}: no records; run the suite with --only {case.key}")
            figures[arm] = by_class(trace.requests, read_records(path, trace), case.slo_ttft_ms)
    print(f"{case.key}, seed {args.seed}, SLO {case.slo_ttft_ms:g} ms")
    print(table(figures))


if __name__ == "__main__":
    main()
