"""The demo's summary says when requests it sent have no trace record, instead of printing
figures over fewer requests as if they were all."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deploy.demo import report


def _record(session: str, ts: float) -> SimpleNamespace:
    return SimpleNamespace(
        prefix_id=session,
        ts=ts,
        worker_id=1,
        reason="overlap",
        prompt_tokens=100,
        cached_tokens=64,
        ttft_ms=7.0,
        error=None,
    )


def test_requests_without_a_trace_record_are_reported(capsys: pytest.CaptureFixture) -> None:
    records = [_record("agent-0", 1.0), _record("agent-0", 2.0)]
    report(records, 1.0, sent=3)
    out = capsys.readouterr().out
    assert "requests            2 in 1.0 s, failed 0" in out
    assert "missing             1 of 3 requests have no trace record" in out


def test_a_complete_run_has_no_missing_line(capsys: pytest.CaptureFixture) -> None:
    report([_record("agent-0", 1.0), _record("agent-0", 2.0)], 1.0, sent=2)
    out = capsys.readouterr().out
    assert "missing" not in out
    assert "turns on same worker 1/1" in out
