"""Per-class figures of a replay: each request counted once, in its client's class."""

from __future__ import annotations

import math

from benchmarks.replay.classes import by_class, table
from benchmarks.replay.records import RequestRecord
from benchmarks.replay.trace import TraceRequest
from router.hints import AgentHints


def _req(index: int, hints: AgentHints | None) -> TraceRequest:
    return TraceRequest(index, 0.0, 100, 10, (index,), hints=hints)


def _rec(index: int, ttft_ms: float, refused: bool = False) -> RequestRecord:
    return RequestRecord(
        index, str(index), -1 if refused else 0, 0.0, ttft_ms, ttft_ms + 1, 100, 10, 0,
        ttft_ms, ttft_ms + 1, refused=refused,
    )  # fmt: skip


def test_requests_are_grouped_by_priority_then_sensitivity() -> None:
    urgent = AgentHints(priority=2, latency_sensitivity=2.0)
    batch = AgentHints(latency_sensitivity=0.5)
    trace = [_req(0, urgent), _req(1, urgent), _req(2, batch), _req(3, batch), _req(4, None)]
    records = [_rec(0, 100.0), _rec(1, 3000.0), _rec(2, 0.0, refused=True), _rec(3, 50.0)]
    records.append(_rec(4, 10.0))
    got = by_class(trace, records, slo_ms=2000.0)
    assert list(got) == [(0, 0.0), (0, 0.5), (2, 2.0)]  # no hints: class (0, 0)
    assert got[(2, 2.0)]["goodput_share"] == 0.5  # 3 s is past the SLO
    assert got[(2, 2.0)]["refused"] == 0 and got[(2, 2.0)]["requests"] == 2
    assert got[(0, 0.5)]["refused"] == 1 and got[(0, 0.5)]["goodput_share"] == 0.5
    assert got[(0, 0.5)]["ttft_p50_ms"] == 50.0  # refused requests have no TTFT


def test_a_class_with_nothing_served_has_no_ttft() -> None:
    trace = [_req(0, AgentHints(priority=1))]
    got = by_class(trace, [_rec(0, 0.0, refused=True)], slo_ms=2000.0)
    f = got[(1, 0.0)]
    assert f["goodput_share"] == 0.0 and math.isnan(f["ttft_p50_ms"])
    assert "| ours | 1 | 0 | 1 | 1 | 0.000 | nan | nan |" in table({"ours": got})
