"""A shared router that stops answering while still in discovery (frozen with SIGSTOP): a
request gets 503 with Retry-After within the router deadline instead of hanging (Dynamo's
request plane answered a 500 after 5 s there, and a router that acknowledges and never
answers held requests for good), ``/health``, the router gauge and the gateway's 503 (its
``code``) say ``router_timeout``,
the decision the router makes late is released, and serving resumes once it answers."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from deploy.local_stack import StackConfig, free_port
from processor.handler import SWEEP_INTERVAL_S
from processor.routing import ROUTER_TIMEOUT_S
from tests.integration.processor_util import chat, metric, poll, running_stack, scrape

pytestmark = pytest.mark.integration

SLACK_S = 2.0  # the stack's own hops on two shared cores


def _ask(base: str, model: str) -> tuple[httpx.Response, float]:
    body = {"model": model, "messages": [{"role": "user", "content": "route me"}], "max_tokens": 4}
    t0 = time.monotonic()
    resp = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
    return resp, time.monotonic() - t0


def _health(url: str) -> tuple[int, str]:
    resp = httpx.get(url.replace("/metrics", "/health"), timeout=5)
    return resp.status_code, resp.json()["status"]


def test_a_frozen_router_answers_503_within_its_deadline_and_serving_resumes() -> None:
    router_port = free_port()
    config = StackConfig(
        workers=1,
        router_component=True,
        supervise=False,  # frozen past its lease the launcher would replace it
        keep_workdir=False,
        router_env={"AKR_ROUTER_METRICS_PORT": str(router_port)},
    )
    with running_stack(config) as stack:
        url = stack.processor_metrics_url
        router_url = f"http://127.0.0.1:{router_port}/metrics"
        chat(stack.gateway_url, stack.model_name, "warm up")
        assert _health(url) == (200, "ready")

        stack.signal("router", signal.SIGSTOP)
        try:
            resp, first_s = _ask(stack.gateway_url, stack.model_name)
            assert resp.status_code == 503, (resp.status_code, resp.text, first_s)
            assert resp.headers["retry-after"] and resp.json()["error"]["type"] == (
                "service_unavailable"
            )
            assert ROUTER_TIMEOUT_S <= first_s < ROUTER_TIMEOUT_S + SLACK_S, first_s
            # The sweep's probe is left unanswered too: the router counts as not answering.
            poll(
                "/health to say router_timeout",
                lambda: _health(url) == (503, "router_timeout"),
                SWEEP_INTERVAL_S + ROUTER_TIMEOUT_S + SLACK_S,
            )
            assert metric(scrape(url), "akr_processor_router_available") == 0
            # Known silent: a request fails at once instead of waiting the deadline again.
            resp, known_s = _ask(stack.gateway_url, stack.model_name)
            assert resp.status_code == 503 and known_s < ROUTER_TIMEOUT_S, (resp.text, known_s)
            # The stock frontend drops the processor's reason from its 503; the gateway reads
            # it from the processor's /health and says it, header and all.
            assert resp.json()["error"]["code"] == "router_timeout", resp.text
            assert resp.headers["retry-after"]
        finally:
            stack.signal("router", signal.SIGCONT)
        thawed = time.monotonic()
        poll("/health ready again", lambda: _health(url) == (200, "ready"), 10)
        back_s = time.monotonic() - thawed
        rid, usage = chat(stack.gateway_url, stack.model_name, "served again")
        assert rid and usage["completion_tokens"] == 4
        samples = scrape(url)
        assert metric(samples, "akr_processor_unavailable_total", reason="router_timeout") == 2
        assert metric(samples, "akr_processor_router_available") == 1
        # The decision the router made late, once thawed, was cancelled: no load held for it.
        poll(
            "no request in flight at the router",
            lambda: metric(scrape(router_url), "akr_router_requests_in_flight") == 0,
            10,
        )
        print(
            f"\nfrozen router: 503 after {first_s:.2f} s, then {known_s:.2f} s once known "
            f"silent; ready {back_s:.2f} s after SIGCONT"
        )
