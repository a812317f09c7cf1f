"""A bad AKR_PROCESSOR_* setting stops the processor with a message naming the variable,
before it connects to anything (the message itself: tests/unit/test_envconfig.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
