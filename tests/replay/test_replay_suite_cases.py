"""The held-out cases stay apart from the suite: their records share one directory, and a
held-out trace must not be one the suite generated."""

from __future__ import annotations

from benchmarks.replay.suite import Case, cases, heldout_cases


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
