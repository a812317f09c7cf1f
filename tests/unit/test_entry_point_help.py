"""`python -m X --help` prints usage and exits 0 without starting anything.

Before, ``python -m processor --help`` and ``python -m router --help`` started a Dynamo
runtime (retrying etcd for two minutes by default), ``python -m deploy.demo --help`` ran the
whole demo, and the record analyses took ``--help`` for a file name (FileNotFoundError).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

import pytest

import benchmarks.hit_latency as hit_latency
import benchmarks.oracle_bound as oracle_bound
import deploy.demo as demo
import processor.__main__ as processor_main
import router.__main__ as router_main


def _never_run(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("--help started something")


@pytest.mark.parametrize(
    ("prog", "main"),
    [
        ("python -m processor", processor_main.main),
        ("python -m router", router_main.main),
        ("python -m deploy.demo", demo.main),
        ("python -m benchmarks.hit_latency", hit_latency.main),
        ("python -m benchmarks.oracle_bound", oracle_bound.main),
    ],
)
def test_help_prints_usage_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prog: str,
    main: Callable[[list[str]], None],
) -> None:
    monkeypatch.setattr(processor_main.uvloop, "run", _never_run)
    monkeypatch.setattr(demo, "LocalStack", _never_run)
    monkeypatch.setattr(hit_latency, "load", _never_run)
    monkeypatch.setattr(oracle_bound, "load", _never_run)
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {prog} ")


def test_processor_without_arguments_still_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[object] = []
    monkeypatch.setattr(processor_main, "configure_logging", lambda: None)
    monkeypatch.setattr(processor_main.uvloop, "run", lambda coro: started.append(coro.close()))
    processor_main.main([])
    assert started


@pytest.mark.parametrize(
    "module",
    [
        "processor.traces",
        "benchmarks.routing",
        "benchmarks.replay.live_mirror",
        "benchmarks.replay.tail_parts",
        "benchmarks.replay.demo",
        "benchmarks.chaos",
        "deploy.config_reference",
        "deploy.vllm.envfile",
    ],
)
def test_usage_names_the_command_to_type(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], module: str
) -> None:
    """Commands the README and the Makefile show. Their usage said ``routing.py``,
    ``traces.py``... (argparse's default, the file name under ``python -m``), which is not a
    command that runs; ``python -m benchmarks.replay.demo --help`` ran the whole replay."""
    mod = importlib.import_module(module)
    monkeypatch.setattr(sys, "argv", [str(mod.__file__), "--help"])
    with pytest.raises(SystemExit) as exc:
        mod.main()
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {module} ")
