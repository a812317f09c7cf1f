"""Losing every worker: fast 'retry later' errors, an honest /health, counted trace losses.

One stack, one worker, trace path below a regular file (it can never be written, as root
too). Requests first succeed while every trace record is lost and counted; then the worker
is killed and a request fails within the no-worker wait instead of hanging.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deploy.local_stack import (
    DEFAULT_MODEL_DIR,
    PUBLIC_MODEL,
    WORKER_ENDPOINT,
    StackConfig,
    free_port,
    loopback_env,
)
from tests.integration.processor_util import chat, metric, poll, running_stack, scrape

pytestmark = pytest.mark.integration

WAIT_S = 1.5


def _health(metrics_url: str) -> tuple[int, dict]:
    resp = httpx.get(metrics_url.replace("/metrics", "/health"), timeout=5)
    return resp.status_code, resp.json()


def _ask(base: str, model: str, stream: bool) -> tuple[int, str, float]:
    """(status, body, seconds) of one chat request to the stock frontend."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "anyone there?"}],
        "max_tokens": 4,
        "stream": stream,
    }
    t0 = time.monotonic()
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as resp:
        text = resp.read().decode()
    return resp.status_code, text, time.monotonic() - t0


def _sse_error_code(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("data: {"):
            error = json.loads(line[6:]).get("error")
            if error:
                return int(error["code"])
    return None


def test_no_worker_fails_fast_and_lost_traces_are_counted(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = StackConfig(
        workers=1,
        supervise=False,  # the launcher would restart the killed worker
        keep_workdir=False,
        processor_env={
            "AKR_PROCESSOR_TRACE_PATH": str(blocker / "processor.jsonl"),
            "AKR_PROCESSOR_NO_WORKER_WAIT_S": str(WAIT_S),
        },
    )
    with running_stack(config) as stack:
        url = stack.processor_metrics_url
        stated = {"model": stack.model_name, "prompt_limit": 1024 * 64}  # 1024 blocks of KV
        assert _health(url) == (
            200,
            {"status": "ready", "routable_workers": 1, "expected_workers": 1, **stated},
        )
        n = 5
        for i in range(n):
            chat(stack.gateway_url, stack.model_name, f"traced {i}")
        ok = metric(scrape(url), "akr_processor_requests_total", outcome="ok")  # + warm-up
        lost = poll(
            "every trace record counted as lost",
            lambda: (
                (d := metric(scrape(url), "akr_processor_trace_records_dropped_total")) >= ok and d
            ),
            10,
        )
        assert lost == ok >= n
        assert (
            metric(scrape(url), "akr_processor_trace_records_dropped_total", reason="unwritable")
            == lost
        )

        stack.kill("mocker0")
        # Right after the kill discovery still lists the worker: the attempt fails, the
        # worker is excluded, and the request fails after the bounded wait.
        status, text, first_s = _ask(stack.frontend_url, stack.model_name, stream=False)
        print(f"\nstock frontend, worker just killed: {status} {text[:200]}")
        assert status == 503, text
        assert first_s < WAIT_S + 3.0, first_s

        _, health = poll(
            "the processor to report no workers",
            lambda: (h := _health(url))[0] == 503 and h,
            30,
        )
        assert health == {
            "status": "no_workers",
            "routable_workers": 0,
            "expected_workers": 1,
            **stated,  # the last limit known while no worker is left
        }
        # Once discovery has dropped the worker: the bounded wait, then the same error.
        status, text, later_s = _ask(stack.frontend_url, stack.model_name, stream=False)
        print(f"stock frontend, no worker in discovery: {status} {text[:200]}")
        assert status == 503, text
        assert WAIT_S <= later_s < WAIT_S + 2.0, later_s
        status, text, _ = _ask(stack.frontend_url, stack.model_name, stream=True)
        print(f"stock frontend, streamed: {status} {text[:200]}")
        assert _sse_error_code(text) == 503, text
        after = scrape(url)
        assert metric(after, "akr_processor_unavailable_total", reason="no_worker") == 3
        assert metric(after, "akr_processor_requests_total", outcome="unavailable") == 3
        print(
            f"no worker: 503 after {first_s:.2f} s (worker still listed), {later_s:.2f} s "
            f"once it left discovery; {lost:g} lost trace records counted"
        )


def test_the_metrics_port_answers_before_any_worker(tmp_path: Path) -> None:
    """Before: the port opened only once a worker's model card was read, so a Kubernetes
    liveness probe could not tell a processor waiting for its workers (minutes of weight
    loading) from a dead one. Now /live answers from start-up and /health says "starting"."""
    port = free_port()
    env = {
        **os.environ,
        **loopback_env(tmp_path / "kv"),
        "AKR_PROCESSOR_MODEL_NAME": PUBLIC_MODEL,
        "AKR_PROCESSOR_MODEL_PATH": str(DEFAULT_MODEL_DIR),
        "AKR_PROCESSOR_WORKER_ENDPOINT": WORKER_ENDPOINT,
        "AKR_PROCESSOR_METRICS_PORT": str(port),
    }
    log = (tmp_path / "processor.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "processor"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        live = poll("/live", lambda: _get_or_none(f"{base}/live"), 60)
        assert (live.status_code, live.json()) == (200, {"status": "alive"})
        health = httpx.get(f"{base}/health", timeout=5)
        assert health.status_code == 503
        assert health.json()["status"] == "starting"
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def _get_or_none(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.TransportError:  # not listening yet
        return None
