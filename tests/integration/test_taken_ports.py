"""A processor or router whose metrics address is taken stops with one line naming the
variables, not the socket's traceback from a thread of a started Dynamo runtime."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local_stack import DEFAULT_MODEL_DIR, REPO_ROOT, WORKER_ENDPOINT, loopback_env

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("module", "env", "prefix"),
    [
        (
            "processor",
            {
                "AKR_PROCESSOR_MODEL_PATH": str(DEFAULT_MODEL_DIR),
                "AKR_PROCESSOR_WORKER_ENDPOINT": WORKER_ENDPOINT,
            },
            "the processor's metrics",
        ),
        ("router", {}, "the router's metrics"),
    ],
)
def test_a_taken_metrics_port_is_one_line_naming_it(
    tmp_path: Path, module: str, env: dict[str, str], prefix: str
) -> None:
    var = f"AKR_{module.upper()}_METRICS"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", module],
            env={
                **os.environ,
                **loopback_env(tmp_path / "kv"),
                "DYN_LOG": "error",
                **env,
                f"{var}_PORT": str(port),
            },
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"{prefix} cannot listen on 127.0.0.1:{port} ({var}_HOST, {var}_PORT): "
        "Address already in use"
    )
