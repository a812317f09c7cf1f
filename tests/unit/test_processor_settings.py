"""A bad AKR_PROCESSOR_* (or AKR_ROUTER_*) setting stops the processor with a message naming
the variable, before it connects to anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from processor.config import ProcessorConfig, settings_from_env
from router.config import RouterConfig

ROOT = Path(__file__).resolve().parents[2]


def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKR_PROCESSOR_METRICS_PORT", "abc")
    monkeypatch.setenv("AKR_PROCESSOR_MAX_RETRIES", "-1")
    with pytest.raises(SystemExit) as done:
        settings_from_env(ProcessorConfig)
    text = str(done.value)
    assert "AKR_PROCESSOR_METRICS_PORT='abc'" in text and "integer" in text
    assert "AKR_PROCESSOR_MAX_RETRIES='-1'" in text
    monkeypatch.setenv("AKR_ROUTER_EXPLORATION", "lots")
    with pytest.raises(SystemExit, match="AKR_ROUTER_EXPLORATION='lots'"):
        settings_from_env(RouterConfig)


def test_the_processor_exits_with_that_message_not_a_traceback(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AKR_PROCESSOR_METRICS_PORT": "abc",
        "DYN_DISCOVERY_BACKEND": "file",
        "DYN_FILE_KV": str(tmp_path / "kv"),
        "DYN_REQUEST_PLANE": "tcp",
        "DYN_EVENT_PLANE": "zmq",
        "DYN_TCP_RPC_HOST": "127.0.0.1",
        "DYN_EVENT_PLANE_HOST": "127.0.0.1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "processor"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "AKR_PROCESSOR_METRICS_PORT='abc'" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
