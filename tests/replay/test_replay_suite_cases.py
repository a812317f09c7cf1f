"""The held-out cases stay apart from the suite: their records share one directory, and a
held-out trace must not be one the suite generated."""

from __future__ import annotations

import json

import pytest

from benchmarks.replay.suite import Case, cases, heldout_cases, merge_previous, render


def _trace_seeds(suite: list[Case]) -> set[int]:
    return {c.make_trace.preset.seed for c in suite if hasattr(c.make_trace, "preset")}


@pytest.fixture(scope="module")
def suite() -> list[Case]:
    return cases()  # sizing every preset takes seconds: once per module


@pytest.fixture(scope="module")
def heldout() -> list[Case]:
    return heldout_cases()


def test_heldout_cases_are_apart_from_the_suite(suite: list[Case], heldout: list[Case]) -> None:
    # Both add the run's seed to fixed offsets, so seed 0 shows the offsets are disjoint.
    keys = [c.key for c in heldout]
    assert len(set(keys)) == len(keys)
    assert not {c.key for c in suite} & set(keys)  # one records directory for both
    assert not _trace_seeds(suite) & _trace_seeds(heldout)
    assert {c.arms for c in heldout} == {("ours", "dynamo_kv")}


def test_report_keeps_the_cases_arm_order_and_shows_end_to_end_latency(suite: list[Case]) -> None:
    # The JSON is written with sorted keys; the report re-rendered from it lists the arms in the
    # case's order (ours first) and puts E2E next to TTFT, each as a ratio to dynamo_kv.
    case = suite[0]
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


def test_a_run_of_some_cases_keeps_the_others_of_the_report(tmp_path, heldout: list[Case]) -> None:
    # `suite --heldout --only X` used to overwrite heldout.json with X alone; now the cases
    # it did not run keep their committed figures and the report lists them in suite order.
    full = heldout
    first, rerun = full[0], full[-1]
    path = tmp_path / "heldout.json"
    old = {"ours": {"ttft_p50_ms": 1.0}, "dynamo_kv": {"ttft_p50_ms": 2.0}}
    stale = {"ours": {"ttft_p50_ms": 9.0}, "dynamo_kv": {"ttft_p50_ms": 9.0}}
    previous = {first.workload: {str(first.workers): old}}
    previous.setdefault(rerun.workload, {})[str(rerun.workers)] = stale
    path.write_text(json.dumps(previous))
    new = {"ours": {"ttft_p50_ms": 3.0}, "dynamo_kv": {"ttft_p50_ms": 4.0}}
    result = {rerun.workload: {str(rerun.workers): new}}
    report = merge_previous(path, full, [rerun], result)
    assert [c.key for c in report] == [first.key, rerun.key]
    assert result[first.workload][str(first.workers)] == old
    assert result[rerun.workload][str(rerun.workers)] == new
    markdown = render("t", "full", report, result, updated_by="only")
    assert markdown.index(f"## {first.workload}") < markdown.index(f"## {rerun.workload}")
    assert "rerun by `only`" in markdown
