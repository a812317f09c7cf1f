"""benchmarks.gateway_overhead: the headline of a multi-stack run is the median of its stacks."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from benchmarks import gateway_overhead as go


def fake_run(added_p50: float, added_p99: float, rps: float) -> dict[str, Any]:
    return {
        "added_p50_ms": added_p50,
        "added_p99_ms": added_p99,
        "max_rps": {"gateway": rps, "frontend": rps + 10},
        "proxy_cpu_us_per_request": 300.0 + added_p50,
        "client_cpu_us_per_request": 200.0,
        "added_p50_ms_median_of_rounds": added_p50,
        "gateway": {"p50_ms": 28.0 + added_p50, "p99_ms": 37.0 + added_p99},
        "frontend": {"p50_ms": 28.0, "p99_ms": 37.0},
        "load_average_1m_before_after": [0.1 * added_p50, 0.2 * added_p50],
        "timestamp": "t",
        "label": "simulated",
        "meets_target": False,
    }


def test_median_over_stacks_decides_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = iter([fake_run(0.6, 3.0, 1200), fake_run(0.3, 0.5, 1250), fake_run(0.45, 1.0, 1300)])
    monkeypatch.setattr(go, "run", lambda args: next(runs))
    out = go.run_stacks(argparse.Namespace(stacks=3))
    assert out["added_p50_ms"] == pytest.approx(0.45)
    assert out["added_p99_ms"] == pytest.approx(1.0)  # one stack's 3.0 ms p99 does not decide
    assert out["max_rps"] == {"gateway": 1250.0, "frontend": 1260.0}
    assert out["meets_target"] is True
    assert [s["added_p50_ms"] for s in out["stacks"]] == [0.6, 0.3, 0.45]
    assert "gateway" not in out and out["stacks"][0]["gateway"]["p50_ms"] == pytest.approx(28.6)
    assert out["load_average_1m_before_after"] == pytest.approx([0.06, 0.09])


def test_one_stack_is_returned_as_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    only = fake_run(0.7, 0.9, 1100)
    monkeypatch.setattr(go, "run", lambda args: only)
    assert go.run_stacks(argparse.Namespace(stacks=1)) is only
