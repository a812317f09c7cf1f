"""The gateway on real stacks under faults: clients that never read, a dead processor, an
over-long prompt, and the processor's "retry later" through Dynamo 1.6.1's stock frontend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from benchmarks.chaos_clients import slow_reader_stack_config, slow_readers
from deploy.local_stack import LocalStack, StackConfig
from frontend.config import GatewayConfig
from frontend.server import start_server, stop_server
from router.unavailable import MARKER
from tests.integration.processor_util import metric, poll, running_stack, scrape

pytestmark = pytest.mark.integration

STALL_S = 3.0


@pytest.fixture(scope="module")
def slow_reader_stack() -> Iterator[LocalStack]:
    config = slow_reader_stack_config(AKR_GATEWAY_STALL_TIMEOUT_S=str(STALL_S))
    with running_stack(config) as running:
        yield running


def test_non_readers_leave_a_normal_requests_latency_alone(slow_reader_stack: LocalStack) -> None:
    """300 streams (max_tokens 1500) whose clients never read: a normal streamed request still
    finds a free upstream slot and is answered; every non-reader is dropped once it stalls
    (its output buffers full for the stall timeout) and the slots are free again.
    """
    stack = slow_reader_stack
    metrics_url = f"{stack.gateway_url}/metrics"

    def all_stalled() -> bool:
        return metric(scrape(metrics_url), "akr_gateway_stalled_clients_total") >= 300

    got = slow_readers(
        stack.url,
        stack.model_name,
        clients=300,
        normal=30,
        direct_url=stack.frontend_url,
        hold_until=all_stalled,
    )
    # Every normal request got its answer within seconds (before, they waited for an upstream
    # slot until the client timed out), and every non-reader was dropped for stalling. Not
    # asserted: p99 < 1 s. Until the non-readers' buffers fill (about 10 s here) the stack
    # generates 300 answers on 2 cores, which makes even the stock frontend, asked directly,
    # take 0.3-1 s.
    assert got["streams_200"] == 300, got
    assert got["normal_max_ms"] < 5000, got

    def drained() -> bool:
        return metric(scrape(metrics_url), "akr_gateway_upstream_slots_in_use") == 0

    poll("every upstream slot free again", drained, timeout_s=10)


def test_health_is_false_while_the_processor_is_down() -> None:
    """Readiness asks the processor: killed, /health and /ready answer 503 within about a
    second (the cache), while /live stays 200. Also: an over-long prompt gets 400 here. The
    kill is the test's own, so the work directory goes at the end (it was kept: one
    /tmp/akr-stack-* left behind by every test run)."""
    with running_stack(StackConfig(workers=1, speedup=10.0, keep_workdir=False)) as stack:
        gw = stack.gateway_url
        r = httpx.get(f"{gw}/health", timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "ready", r.text
        # the context window (131072 tokens) from the frontend's model list: 2 MiB of text is
        # over 8 bytes per token
        body = {
            "model": stack.model_name,
            "messages": [{"role": "user", "content": "word " * (2 * 1024 * 1024 // 5)}],
            "max_tokens": 1,
        }
        r = httpx.post(f"{gw}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "messages" and err["code"] == "context_length_exceeded"

        stack.kill("processor")
        t0 = time.monotonic()

        def not_ready() -> bool:
            return httpx.get(f"{gw}/health", timeout=5).status_code == 503

        poll("/health 503 with the processor dead", not_ready, timeout_s=5)
        took = time.monotonic() - t0
        r = httpx.get(f"{gw}/ready", timeout=5)
        assert r.status_code == 503 and r.json()["reason"] == "processor_unreachable", r.text
        assert httpx.get(f"{gw}/live", timeout=5).status_code == 200
        assert took < 3.0, took
    assert not stack.workdir.exists()


class _NoAnswerStack(LocalStack):
    """A stack whose engine never answers successfully: start-up cannot wait for an answer."""

    def _wait_answer(self, base: str, model: str) -> None:
        return None


async def _ask_through_gateway(frontend_url: str, model: str) -> list[tuple[int, dict, Any]]:
    cfg = GatewayConfig(upstream_url=frontend_url, host="127.0.0.1", port=0, retry_after_s=2)
    gw, server = await start_server(cfg)
    port = server.sockets[0].getsockname()[1]
    out = []
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            for stream in (False, True):
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                r = await client.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={**body, "max_tokens": 4, "stream": stream},
                )
                out.append((r.status_code, dict(r.headers), r.json()))
            metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            out.append((0, {}, metrics))
    finally:
        await stop_server(gw, server)
    return out


def test_processor_unavailable_reaches_the_client_as_503() -> None:
    """An engine registered as the model raising HttpError(503) (what the processor raises when
    no worker can take the request): the stock frontend answers 503 (non-streamed) or a 200
    stream whose first event is an error with code 503; the gateway answers 503 with
    Retry-After and an OpenAI-style error in both cases."""
    config = StackConfig(
        workers=1, arm="round-robin", worker_module="tests.integration.unavailable_worker"
    )
    stack = _NoAnswerStack(config)
    with stack:
        direct = {
            stream: httpx.post(
                f"{stack.frontend_url}/v1/chat/completions",
                json={
                    "model": stack.model_name,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 1,
                    "stream": stream,
                },
                timeout=30,
            )
            for stream in (False, True)
        }
        # What 1.6.1 does (docs/DESIGN.md, "Retry-later answers"): the status stays, its own
        # text replaces the engine's (marker, reason and retry time gone), no Retry-After.
        assert direct[False].status_code == 503
        assert direct[False].json() == {
            "message": "Internal server error",
            "type": "Service Unavailable",
            "code": 503,
        }
        assert direct[True].status_code == 200 and '"code":503' in direct[True].text
        assert '"message":"Service temporarily unavailable"' in direct[True].text
        for r in direct.values():
            assert MARKER not in r.text and "no_worker" not in r.text, r.text
            assert "retry-after" not in r.headers, r.headers
        *answers, (_, _, metrics) = asyncio.run(
            _ask_through_gateway(stack.frontend_url, stack.model_name)
        )
    for status, headers, body in answers:
        assert status == 503 and headers["retry-after"] == "2", (status, body)
        assert body["error"]["type"] == "service_unavailable"
        assert body["error"]["code"] == "unavailable"
    assert 'akr_gateway_unavailable_total{reason="unavailable"} 2.0' in metrics
