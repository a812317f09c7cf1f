"""`python -m deploy.local_stack` rejects bad flags before it starts anything.

Before, ``--arm foo`` went to the stock frontend as ``--router-mode foo`` (the stack failed at
start-up and kept its work directory), ``--speeds a,b`` was a ValueError traceback, and
``--workers 0`` started a stack without workers that waited minutes for a model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import deploy.local_stack as local_stack


def _never_run(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("started a stack on a bad flag")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--arm", "foo"], "--arm"),
        (["--speeds", "a,b"], "--speeds"),
        (["--speeds", "1,-1"], "--speeds"),
        (["--workers", "0"], "--workers"),
        (["--speedup", "nan"], "--speedup"),
        (["--gpu-blocks", "x"], "--gpu-blocks"),
    ],
)
def test_bad_flag_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    monkeypatch.setattr(local_stack, "LocalStack", _never_run)
    with pytest.raises(SystemExit) as exc:
        local_stack.main(argv)
    assert exc.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_documented_flags_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's commands reach LocalStack with the configuration they name."""
    seen = []

    class Stop(Exception):
        pass

    def fake(config: local_stack.StackConfig) -> None:
        seen.append(config)
        raise Stop

    monkeypatch.setattr(local_stack, "LocalStack", fake)
    documented = (
        ["--workers", "4", "--speedup", "10"],
        ["--speeds", "1,1,0.5,0.5"],
        ["--arm", "kv"],
        ["--workdir", "/tmp/akr-run"],
    )
    for argv in documented:
        with pytest.raises(Stop):
            local_stack.main(argv)
    assert seen[0].workers == 4 and seen[0].speedup == 10.0
    assert seen[1].worker_speeds() == [1.0, 1.0, 0.5, 0.5]
    assert seen[2].arm == "kv"
    # Before, the only work directory was a temporary one, removed at Ctrl-C with the traces
    # the README's tuning flow starts from.
    assert seen[3].workdir == Path("/tmp/akr-run") and seen[0].workdir is None


def test_a_failed_start_is_reported_in_one_clean_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: '...; failures: start-up failed; ' with a dangling separator when nothing
    else had failed (seen with AKR_ROUTER_EXPLORATION=lots: the processor exits at start)."""
    stack = local_stack.LocalStack(local_stack.StackConfig())
    stack.start_failed = True
    stack.stop()
    line = capsys.readouterr().err.strip()
    assert line.endswith(f"kept (logs, traces): {stack.workdir}; failures: start-up failed")
    shutil.rmtree(stack.workdir)
