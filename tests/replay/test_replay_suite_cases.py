"""The held-out cases stay apart from the suite: their records share one directory, and a
held-out trace must not be one the suite generated."""

from __future__ import annotations

import json

from benchmarks.replay.suite import Case, cases, heldout_cases, render


def _trace_seeds(suite: list[Case]) -> set[int]:
    return {c.make_trace.preset.seed for c in suite if hasattr(c.make_trace, "preset")}


def test_heldout_cases_are_apart_from_the_suite() -> None:
    # Both add the run's seed to fixed offsets, so seed 0 shows the offsets are disjoint.
    suite, heldout = cases(), heldout_cases()
    keys = [c.key for c in heldout]
    assert len(set(keys)) == len(keys)
    assert not {c.key for c in suite} & set(keys)  # one records directory for both
    assert not _trace_seeds(suite) & _trace_seeds(heldout)
    assert {c.arms for c in heldout} == {("ours", "dynamo_kv")}


def test_report_keeps_the_cases_arm_order_and_shows_end_to_end_latency() -> None:
    # The JSON is written with sorted keys; the report re-rendered from it lists the arms in the
    # case's order (ours first) and puts E2E next to TTFT, each as a ratio to dynamo_kv.
    case = cases()[0]
    fig = {"ttft_p50_ms": 10.0, "e2e_p50_ms": 1000.0, "e2e_p99_ms": 4000.0}
    slower = {**fig, "e2e_p50_ms": 1100.0}
    result = json.loads(
        json.dumps(
            {
                case.workload: {
                    str(case.workers): {a: slower if a == "ours" else fig for a in case.arms}
                }
            },
            sort_keys=True,
        )
    )
    rows = [
        line for line in render("t", "cmd", [case], result).splitlines() if line.startswith("| ")
    ]
    assert "E2E p50" in rows[0] and "E2E p99" in rows[0]
    assert [r.split(" | ")[0][2:] for r in rows[1:]] == list(case.arms)
    assert "1,100 (1.10x)" in rows[1]
