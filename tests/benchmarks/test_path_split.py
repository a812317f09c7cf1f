"""benchmarks.path_split: joining client records to processor traces, and the answer id."""

from __future__ import annotations

import pytest

from benchmarks.driver import Record, _answer_id
from benchmarks.path_split import join, stats
from processor.traces import TraceRecord


def _client(
    rid: str | None, t_send_s: float, ttft: float, cached: int, error: str | None = None
) -> Record:
    return Record(
        "agentic",
        "ours",
        0,
        "s",
        "agent",
        1,
        t_send_s,
        200,
        ttft,
        ttft + 50,
        None,
        8,
        1000,
        cached,
        900,
        8,
        error=error,
        request_id=rid,
    )


def _trace(rid: str, ts: float, decision_us: float | None, ttft: float) -> TraceRecord:
    return TraceRecord(
        v=1,
        ts=ts,
        request_id=rid,
        prompt_tokens=1000,
        block_size=64,
        block_hashes=[],
        decision_us=decision_us,
        ttft_ms=ttft,
    )


def test_join_splits_client_ttft_into_parts_that_add_up() -> None:
    t0 = 1000.0
    rows = join(
        [
            _client("a", 1.0, 40.0, 950),
            _client("b", 2.0, 60.0, 100),
            _client("c", 3.0, 50.0, 950),  # no trace record: skipped
            _client("d", 4.0, 50.0, 950, error="http 500"),
        ],  # failed: skipped
        [
            _trace("a", t0 + 1.005, 1000.0, 30.0),
            _trace("b", t0 + 2.006, None, 45.0),
            _trace("d", t0 + 4.005, 900.0, 30.0),
        ],
        t0,
    )
    assert len(rows) == 2
    a, b = rows
    assert a["hit"] and not b["hit"]
    assert a["request_path_ms"] == pytest.approx(5.0, abs=1e-6)
    assert a["decision_ms"] == 1.0 and a["worker_ms"] == 30.0
    assert a["response_path_ms"] == pytest.approx(4.0, abs=1e-6)
    assert b["decision_ms"] == 0.0 and b["response_path_ms"] == pytest.approx(9.0, abs=1e-6)
    for r in rows:
        parts = r["request_path_ms"] + r["decision_ms"] + r["worker_ms"] + r["response_path_ms"]
        assert parts == pytest.approx(r["ttft_ms"])


def test_stats_and_answer_id() -> None:
    assert stats([]) == {"mean": None, "p50": None, "p90": None, "p99": None}
    assert stats([1.0, 2.0, 3.0])["p50"] == 2.0
    ev = '{"id":"chatcmpl-4816e28e-8fce","choices":[{"delta":{"content":"x"}}]}'
    assert _answer_id(ev) == "4816e28e-8fce"
    assert _answer_id('{"choices":[]}') is None
