"""Both launchers supervise their processes once the stack is up: a process that dies is
restarted with backoff and counted, its death reported with name, exit code and runtime, and a
stack where anything failed keeps its work directory (logs, traces) and prints its path.

The frozen-worker case (alive, registration lost) runs in tests/integration/test_chaos.py.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import IO

import httpx
import pytest

from deploy.local_stack import REPO_ROOT, LocalStack, StackConfig, free_port
from tests.integration.processor_util import poll

pytestmark = pytest.mark.integration


def _chat_ok(url: str, model: str) -> bool:
    body = {"model": model, "messages": [{"role": "user", "content": "up?"}], "max_tokens": 2}
    try:
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


class Lines:
    """A child's output, read line by line on a thread (so waiting never blocks on a pipe)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self._queue.put(raw.decode(errors="replace").rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        for line in self.seen:
            if text in line:
                return line
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} after {timeout_s} s:\n" + "\n".join(self.seen))


def test_local_stack_cli_restarts_a_killed_processor_and_reports_it() -> None:
    """The old launcher said "processor exited with -9 during start-up", stopped the stack and
    deleted its work directory; now the processor comes back and the death is told as it was."""
    launcher = subprocess.Popen(
        [sys.executable, "-m", "deploy.local_stack", "--workers", "1"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out = Lines(launcher.stdout)
    workdir: Path | None = None
    try:
        clients = out.wait_for("clients:", 120).split()[1]
        url = clients.removesuffix("/v1/chat/completions")
        status_path = Path(out.wait_for("supervisor status", 10).split()[-1])
        workdir = status_path.parent
        old_pid = json.loads(status_path.read_text())["components"]["processor"]["pid"]
        os.killpg(old_pid, signal.SIGKILL)  # the processor's own process group
        killed_at = time.monotonic()

        def restarted() -> dict | None:
            status = json.loads(status_path.read_text())["components"]["processor"]
            return status if status["restarts"] == 1 and status["state"] == "running" else None

        status = poll("the processor restarted", restarted, 30)
        poll("an answer through the gateway", lambda: _chat_ok(url, "akr-tiny"), 30)
        serving_again_s = time.monotonic() - killed_at
        assert status["pid"] != old_pid
        assert status["last_exit"]["code"] == -9 and status["last_exit"]["reason"] == "exited"
        line = out.wait_for(f"processor (pid {old_pid}) exited with -9 (SIGKILL) after", 5)
        assert "restart 1 in 0.5 s" in line and "start-up" not in line
    finally:
        os.killpg(launcher.pid, signal.SIGTERM)
        code = launcher.wait(timeout=60)
    assert code == 0
    kept = out.wait_for("stack work directory kept", 10)
    assert workdir is not None and str(workdir) in kept and workdir.exists()
    assert (workdir / "processor.log").exists() and (workdir / "launcher.log").exists()
    shutil.rmtree(workdir)
    print(f"\nprocessor killed: serving again after {serving_again_s:.1f} s")


def test_unsupervised_runtime_death_is_reported_and_the_workdir_kept(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with LocalStack(StackConfig(workers=1, supervise=False)) as stack:
        time.sleep(0.5)  # a measurable runtime
        stack.kill("mocker0")
        poll("the death noticed", lambda: stack.supervisor.failures, 5)
        workdir = stack.workdir
        assert stack.restarts("mocker0") == 0
    err = capsys.readouterr().err
    assert "exited with -9 (SIGKILL) after" in err and "mocker0 (pid" in err
    assert "not restarted (supervision off)" in err and "start-up" not in err
    assert f"stack work directory kept (logs, traces): {workdir}" in err
    assert (workdir / "mocker0.log").exists()
    shutil.rmtree(workdir)


def test_a_clean_stack_removes_its_workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """...and leaves nothing in the temporary directory it was started with. Before, each
    Dynamo process start left a logging-config file there (dynamo.runtime.logging writes one
    and never removes it): thousands in /tmp after a day of test runs."""
    machine_tmp = tmp_path / "machine-tmp"
    machine_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(machine_tmp))
    with LocalStack(StackConfig(workers=1, arm="round-robin")) as stack:
        workdir = stack.workdir
        assert _chat_ok(stack.url, stack.model_name)
    assert not workdir.exists()
    assert sorted(p.name for p in machine_tmp.iterdir()) == []


STANDIN_GATEWAY = textwrap.dedent(
    """
    import http.server, json, sys
    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "m"}]}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Models).serve_forever()
    """
)

DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from deploy.vllm.launch import PY, Plan, Process, run
    workdir, port, gateway = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    crash = "import time; time.sleep(4); raise SystemExit(3)"
    plan = Plan(
        [
            Process("worker0", [PY, "-c", crash]),
            Process("gateway", [PY, "-c", gateway, str(port)]),
        ],
        workdir, "127.0.0.1", 0, port, None, [], "m",
    )
    sys.exit(run(plan, 60.0))
    """
)


def test_vllm_launcher_restarts_a_dead_worker_and_reports_it(tmp_path: Path) -> None:
    """Stand-in processes (no GPU): a worker that exits with 3 after 4 s. The old launcher
    printed "worker0 exited with 3; see its log" and stopped the whole stack."""
    workdir = tmp_path / "stack"
    launcher = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(workdir), str(free_port()), STANDIN_GATEWAY],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out = Lines(launcher.stdout)
    try:
        out.wait_for("stack ready", 30)
        first = out.wait_for("supervisor: worker0", 30)
        assert "exited with 3 after 4." in first and "restart 1 in 0.5 s" in first
        second = out.wait_for("restart 2 in 1.0 s", 30)
        assert "worker0 (pid" in second and "exited with 3 after 4." in second
    finally:
        os.killpg(launcher.pid, signal.SIGTERM)
        code = launcher.wait(timeout=30)
    assert code == 0
    status = json.loads((workdir / "supervisor.json").read_text())["components"]
    assert status["worker0"]["restarts"] >= 2 and status["gateway"]["restarts"] == 0
    assert status["worker0"]["last_exit"]["code"] == 3
    assert f"work directory kept (logs, traces): {workdir}" in out.wait_for("work directory", 5)
