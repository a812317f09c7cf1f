"""The shared Mooncake trace: found beside the checkout whatever the working directory, and a
missing one says where it belongs and where it comes from.

A fresh clone outside the machine's usual directory ran 'make test' into 11 replay failures:
three said only "the shared Mooncake trace is missing: <path>", eight were a bare
FileNotFoundError for '../shared/traces/...' (a path relative to the working directory), and
nothing in the README said the trace is needed or where to get it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks.replay.fidelity as fidelity
import benchmarks.replay.trace as trace
from benchmarks.replay.suite import MooncakeTrace
from deploy.local_stack import REPO_ROOT


def test_the_trace_is_looked_for_beside_the_checkout() -> None:
    want = REPO_ROOT.parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"
    assert trace.MOONCAKE_TRACE == want
    assert fidelity.TRACE == want  # was relative to the working directory


def test_a_missing_trace_says_where_it_belongs_and_where_it_comes_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "shared" / "traces" / "mooncake_conversation_trace.jsonl"
    monkeypatch.setattr(trace, "MOONCAKE_TRACE", missing)
    with pytest.raises(FileNotFoundError) as exc:
        MooncakeTrace(limit=10)(tmp_path)  # the replay suite's mooncake cases
    message = str(exc.value)
    assert str(missing) in message
    assert "kvcache-ai/Mooncake, FAST25-release/traces/conversation_trace.jsonl" in message
