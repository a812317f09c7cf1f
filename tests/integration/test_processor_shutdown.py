"""SIGTERM (how Kubernetes and the launcher stop a pod) stops the processor gracefully.

The processor leaves discovery, lets in-flight requests finish, then flushes its trace queue and
saves the learner. Before, SIGTERM killed it on the spot: pending trace records and everything
learned since the last periodic snapshot were lost.
"""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest

from deploy.local_stack import LocalStack, StackConfig
from processor.traces import read_records
from tests.integration.processor_util import chat

pytestmark = pytest.mark.integration


def test_sigterm_saves_the_learner_and_flushes_the_trace(tmp_path) -> None:
    state = tmp_path / "state" / "learner.json"
    # A state file an older version wrote (another feature set): the processor starts from
    # the prior instead of refusing to start, and replaces the file at shutdown.
    state.parent.mkdir(parents=True)
    old_state = json.dumps({"version": 1, "features": ["bias", "uncached_ktok"], "workers": {}})
    state.write_text(old_state)
    workdir = tmp_path / "stack"
    config = StackConfig(
        workers=2,
        workdir=workdir,
        # The first periodic snapshot comes a minute after start, after this test: the file
        # can only come from the save at shutdown.
        processor_env={"AKR_ROUTER_STATE_PATH": str(state)},
    )
    with LocalStack(config) as stack:
        sent = {
            chat(
                stack.gateway_url,
                stack.model_name,
                f"shutdown probe {i}",
                nvext={"agent_hints": {"prefix_id": "shutdown", "total_requests": 5}},
            )[0]
            for i in range(5)
        }
        trace = stack.trace_path
        assert state.read_text() == old_state
    # leaving the `with` sent SIGTERM to every process group of the stack
    assert state.read_text() != old_state, "the processor did not save its learner at SIGTERM"
    assert json.loads(state.read_text())["version"] == 2
    traced = {r.request_id for r in read_records(trace)}
    assert sent <= traced
    log = (workdir / "processor.log").read_text(errors="replace")
    assert "Received shutdown signal" in log
    assert "not usable" in log


def test_health_says_draining_while_the_processor_finishes(tmp_path) -> None:
    """From SIGTERM to exit (grace period, in-flight requests) the processor's /health, which
    the gateway's readiness asks, answers 503 "draining"; it said "ready" until the end."""
    config = StackConfig(
        workers=1,
        supervise=False,  # the launcher would restart it
        keep_workdir=False,
        processor_env={"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "5"},
    )
    with LocalStack(config) as stack:
        health = f"http://127.0.0.1:{stack.processor_metrics_port}/health"
        assert httpx.get(health, timeout=5).json()["status"] == "ready"
        processor = next(c for c in stack.procs if c.name == "processor")
        assert processor.popen is not None
        processor.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        seen = None
        while time.monotonic() < deadline:  # the signal is handled asynchronously
            resp = httpx.get(health, timeout=5)
            seen = (resp.status_code, resp.json()["status"])
            if seen == (503, "draining"):
                break
            time.sleep(0.05)
        assert seen == (503, "draining")
        assert processor.popen.poll() is None  # still finishing: the grace period runs
