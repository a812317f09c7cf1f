"""``python -m benchmarks.replay run``: its table shows ratios to Dynamo's kv."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.replay.__main__ import main


def test_the_default_arms_are_compared_with_the_kv_port(
    capsys: pytest.CaptureFixture, mooncake_path: Path
) -> None:
    """The default arms run the port of Dynamo's kv (not its replay): the table took ratios
    only to "dynamo_kv", so it showed none."""
    run = ["run", "--trace", str(mooncake_path), "--limit", "60", "--workers", "2"]
    assert main([*run, "--arms", "ours,dynamo_kv_port"]) == 0
    ours = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| ours"))
    assert "x)" in ours  # a ratio to the port
