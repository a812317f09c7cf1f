"""The standalone router component: shared by two processors, learner state kept across restarts."""

from __future__ import annotations

import httpx
import pytest

from deploy.local_stack import LocalStack, StackConfig, free_port
from processor.traces import read_records
from tests.conftest import wait_for_trace

pytestmark = pytest.mark.integration


def _ask(url: str, model: str, i: int) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"step {i} of the shared agent plan"}],
        "max_tokens": 4,
        "nvext": {"agent_hints": {"prefix_id": f"conv-{i % 3}", "total_requests": 4}},
    }
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 200, resp.text


def _metric(text: str, name: str) -> float:
    """Sum of the samples of ``name`` (all label sets) in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_processors_share_one_router_and_its_state_survives_a_restart(tmp_path) -> None:
    state = tmp_path / "router-state.json"
    metrics_port = free_port()
    config = StackConfig(
        workers=2,
        router_component=True,
        processors=2,
        # The first periodic snapshot comes a minute after start, after this test: the state
        # file can only come from the save the router makes when the stack stops it (SIGTERM).
        router_env={
            "AKR_ROUTER_STATE_PATH": str(state),
            "AKR_ROUTER_METRICS_PORT": str(metrics_port),
        },
    )
    with LocalStack(config) as stack:
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        for i in range(12):
            _ask(stack.gateway_url, stack.model_name, i)
            if i == 5:  # 2 of each conversation's 4 requests: all 3 are tracked
                text = httpx.get(metrics_url, timeout=5).text
                assert _metric(text, "akr_router_prefixes") == 3
        first = wait_for_trace(stack, lambda r: r.prefix_id is not None and r.worker_id is not None)
        second = stack.trace_path.with_name("processor1.jsonl")
        records = first + (list(read_records(second)) if second.exists() else [])
        hinted = [r for r in records if r.prefix_id]
        # the stock frontend spreads requests over both processors; every one was routed
        assert {r.request_id for r in hinted} and all(r.reason for r in hinted)
        assert second.exists() and any(r.prefix_id for r in read_records(second)), (
            "the second processor served nothing"
        )
        assert "router serving" in stack.log_tail("router", 200)
        for name in ("processor", "processor1"):
            assert "routing through the router component" in stack.log_tail(name, 400)
        # The shared router exports its own state: the 12 decisions (+ the stack's readiness
        # probe); each conversation used up its 4-request budget, so none is tracked any more.
        text = httpx.get(metrics_url, timeout=5).text
        assert 12 <= _metric(text, "akr_router_decisions_total") <= 13
        assert _metric(text, "akr_router_prefixes") == 0
    assert state.exists(), "the router did not save its learner state at shutdown"

    with LocalStack(config) as stack:
        _ask(stack.gateway_url, stack.model_name, 0)
        assert "restored learner state" in stack.log_tail("router", 200)
