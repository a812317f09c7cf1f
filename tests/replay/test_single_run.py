"""``python -m benchmarks.replay run``: its table shows ratios to Dynamo's kv."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.replay.__main__ import main

TRACE = Path(__file__).resolve().parents[3] / "shared/traces/mooncake_conversation_trace.jsonl"


def test_the_default_arms_are_compared_with_the_kv_port(capsys: pytest.CaptureFixture) -> None:
    """The default arms run the port of Dynamo's kv (not its replay): the table took ratios
    only to "dynamo_kv", so it showed none."""
    if not TRACE.exists():
        pytest.fail(f"the shared Mooncake trace is missing: {TRACE}")
    run = ["run", "--trace", str(TRACE), "--limit", "60", "--workers", "2"]
    assert main([*run, "--arms", "ours,dynamo_kv_port"]) == 0
    ours = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| ours"))
    assert "x)" in ours  # a ratio to the port
