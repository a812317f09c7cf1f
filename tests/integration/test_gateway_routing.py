"""Routing in the gateway (AKR_GATEWAY_ROUTING=gateway) on a real stack, no processor.

The gateway asks the stock frontend (``--router-mode kv``) for the prompt's tokens, decides
with our router and sends the request pinned to the chosen worker with the tokens attached
(frontend/routing.py). Asserted on what the client gets and on the gateway's trace: the
tokens the router decided on are the tokens the worker served (same prompt length), a
conversation stays where its cache is, bad hints still get 400 before anything is routed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deploy.local_stack import LocalStack, StackConfig
from tests.integration.processor_util import (
    chat,
    engine_reports,
    metric,
    per_worker,
    running_stack,
    scrape,
    timed_while_frozen,
)

pytestmark = pytest.mark.integration

SYSTEM = "You are a careful agent that plans tool calls. " * 40


@pytest.fixture(scope="module")
def gw_stack() -> Iterator[LocalStack]:
    with LocalStack(StackConfig(workers=2, speedup=10.0, arm="gateway")) as s:
        yield s


def _trace(
    stack: LocalStack, prefix_id: str, want: int, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """The gateway's trace records of one conversation, once ``want`` were written."""
    path = stack.trace_path.with_name("gateway.jsonl")
    deadline = time.monotonic() + timeout_s
    while True:
        recs = []
        if path.exists():
            recs = [
                r
                for r in map(json.loads, path.read_text().splitlines())
                if (r.get("hints") or {}).get("prefix_id") == prefix_id
            ]
        if len(recs) >= want or time.monotonic() > deadline:
            return recs
        time.sleep(0.1)


def test_conversation_is_routed_by_the_gateway_and_keeps_its_worker(gw_stack: LocalStack) -> None:
    history = f"{SYSTEM}\nTask: summarise the logs."
    nvext = {
        "agent_hints": {"prefix_id": "gw-conv", "total_requests": 4, "iat": 200, "osl": 8},
        "cache_control": {"type": "ephemeral", "ttl": "30s"},
    }
    usages = []
    for turn in range(3):
        _, usage = chat(
            gw_stack.gateway_url,
            gw_stack.model_name,
            history,
            nvext=nvext,
            max_tokens=8,
            stream=True,
        )
        usages.append(usage)
        history += f"\nTool result {turn}: " + "line of output " * 30
    recs = _trace(gw_stack, "gw-conv", 3)
    assert len(recs) == 3
    # The router decided on the tokens the worker then served.
    assert [r["prompt_tokens"] for r in recs] == [u["prompt_tokens"] for u in usages]
    assert len({r["worker_id"] for r in recs}) == 1, recs
    assert all(r["status"] == 200 and r["ttft_ms"] is not None and r["ttft_ms"] > 0 for r in recs)
    assert recs[0]["hints"]["prefix_id"] == "gw-conv"
    # Later turns found the earlier turns' blocks on that worker.
    assert usages[1]["prompt_tokens_details"]["cached_tokens"] > 0
    assert usages[2]["prompt_tokens_details"]["cached_tokens"] > 0
    assert all(u["completion_tokens"] == 8 for u in usages)


def test_non_streaming_request_is_routed(gw_stack: LocalStack) -> None:
    _, usage = chat(
        gw_stack.gateway_url,
        gw_stack.model_name,
        "a short question",
        max_tokens=5,
        nvext={"agent_hints": {"prefix_id": "gw-whole"}},
    )
    assert usage["completion_tokens"] == 5
    (rec,) = _trace(gw_stack, "gw-whole", 1)
    assert rec["prompt_tokens"] == usage["prompt_tokens"] and rec["status"] == 200
    assert rec["ttft_ms"] is None  # the whole answer arrives at once: no first token to time


def test_completions_are_routed_too(gw_stack: LocalStack) -> None:
    resp = httpx.post(
        f"{gw_stack.gateway_url}/v1/completions",
        timeout=30,
        json={
            "model": gw_stack.model_name,
            "prompt": "once upon a time " * 20,
            "max_tokens": 4,
            "nvext": {"agent_hints": {"prefix_id": "gw-completion"}},
        },
    )
    assert resp.status_code == 200, resp.text
    (rec,) = _trace(gw_stack, "gw-completion", 1)
    assert rec["route"] == "/v1/completions"
    assert rec["prompt_tokens"] == resp.json()["usage"]["prompt_tokens"]


def test_routing_metrics(gw_stack: LocalStack) -> None:
    chat(
        gw_stack.gateway_url,
        gw_stack.model_name,
        "count me",
        max_tokens=2,
        nvext={"agent_hints": {"prefix_id": "gw-metrics"}},
    )
    text = httpx.get(f"{gw_stack.gateway_url}/metrics", timeout=10).text
    assert "akr_gateway_decisions_total{reason=" in text
    assert "akr_gateway_tokens_seconds_count" in text
    assert "akr_gateway_decision_seconds_count" in text


def test_gateway_reads_the_workers_own_reports(gw_stack: LocalStack) -> None:
    """As the processor does: each mocker's KV capacity from its model card and its engine's
    queue from the forward-pass metrics, over the loopback event plane (nothing held back on
    this idle stack)."""
    capacity, waiting = engine_reports(f"{gw_stack.gateway_url}/metrics", "akr_gateway", 2)
    assert sorted(capacity.values()) == [gw_stack.config.gpu_blocks] * 2
    assert waiting.keys() == capacity.keys() and set(waiting.values()) == {0.0}


def test_bad_hint_is_rejected_before_routing(gw_stack: LocalStack) -> None:
    resp = httpx.post(
        f"{gw_stack.gateway_url}/v1/chat/completions",
        timeout=30,
        json={
            "model": gw_stack.model_name,
            "messages": [{"role": "user", "content": "hi"}],
            "nvext": {"agent_hints": {"prefix_id": "gw-bad", "total_requests": 0}},
        },
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "nvext.agent_hints.total_requests"
    # Rejected before anything was routed: the reject record carries no decision.
    chat(
        gw_stack.gateway_url,
        gw_stack.model_name,
        "after the bad one",
        max_tokens=2,
        nvext={"agent_hints": {"prefix_id": "gw-after-bad"}},
    )
    assert len(_trace(gw_stack, "gw-after-bad", 1)) == 1
    path = gw_stack.trace_path.with_name("gateway.jsonl")
    rejects = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("reject")]
    assert rejects and all("worker_id" not in r for r in rejects)


def test_killed_worker_is_retried_elsewhere_and_quarantined() -> None:
    """Two mocker processes, one worker each. Conversations are placed on both; then one
    process is killed. Discovery still lists its worker for ~10 s (file lease), so the next
    turn of a conversation homed there is pinned to it and the frontend answers 5xx before
    any token: the gateway reports the failure, quarantines the worker and decides again.
    Every next turn, streamed or not, gets its answer."""
    with LocalStack(StackConfig(speeds=[10.0, 9.0], arm="gateway")) as stack:
        url, model = stack.gateway_url, stack.model_name
        prompts: dict[str, str] = {}
        homes: set[str] = set()
        for i in range(12):  # until both workers hold a conversation
            pid = f"kill-{i}"
            prompts[pid] = f"Conversation {i}: " + f"distinct topic number {i} " * (30 + 7 * i)
            chat(
                url,
                model,
                prompts[pid],
                max_tokens=2,
                nvext={"agent_hints": {"prefix_id": pid, "total_requests": 4}},
            )
            homes.add(_trace(stack, pid, 1)[-1]["worker_id"])
            if len(homes) == 2 and i >= 3:
                break
        assert len(homes) == 2, "the router never used the second worker"
        stack.kill("mocker0")
        for n, (pid, prompt) in enumerate(prompts.items()):
            _, usage = chat(
                url,
                model,
                prompt + "\nTool result: done.",
                max_tokens=2,
                stream=n % 2 == 0,
                nvext={"agent_hints": {"prefix_id": pid, "total_requests": 4}},
            )
            assert usage["completion_tokens"] == 2
        samples = scrape(f"{url}/metrics")
        retries = metric(samples, "akr_gateway_retries_total")
        failed = {
            w for w, v in per_worker(samples, "akr_gateway_worker_errors_total").items() if v > 0
        }
        print(f"\nkilled worker: {retries:.0f} retries, conversations on {len(homes)} workers")
        assert retries >= 1 and len(failed) == 1
        # Quarantined: after the first failure no later turn was pinned to the dead worker.
        assert metric(samples, "akr_gateway_worker_errors_total") == retries


def test_frozen_worker_misses_the_first_token_deadline_and_is_retried() -> None:
    """One of two mocker processes is stopped with SIGSTOP: alive to discovery, silent. A
    streamed request the gateway pins to it gets no first token; after
    ``first_token_timeout_s`` (1.5 s here, against Dynamo's own 5 s request timeout and the
    upstream's 300 s read timeout) the gateway drops it, quarantines the worker and decides
    again. Every request gets its full answer; the ones that were retried took the deadline
    plus one answer, and the frozen worker alone is blamed."""
    timeout_s = 1.5
    config = StackConfig(
        speeds=[1.0, 1.5],
        gpu_blocks=1024,
        arm="gateway",
        gateway_env={"AKR_GATEWAY_FIRST_TOKEN_TIMEOUT_S": str(timeout_s)},
    )
    with running_stack(config) as stack:
        url, model = stack.gateway_url, stack.model_name
        engine_reports(f"{url}/metrics", "akr_gateway", 2)  # both workers known

        got = timed_while_frozen(
            stack,
            "mocker1",
            lambda i: chat(
                url, model, f"frozen test {i}: " + "ctx " * 30, max_tokens=4, stream=True
            )[1],
        )
        samples = scrape(f"{url}/metrics")
        retries = metric(samples, "akr_gateway_retries_total")
        blamed = {
            w for w, v in per_worker(samples, "akr_gateway_worker_errors_total").items() if v > 0
        }
        print(
            f"\nfrozen worker: {retries:.0f} of 4 streamed requests retried after "
            f"{timeout_s} s; client latencies {[round(x, 2) for _, x in got]} s"
        )
        assert all(usage["completion_tokens"] == 4 for usage, _ in got)
        assert retries >= 1 and len(blamed) == 1
        slow = sorted(latency for _, latency in got)[-int(retries) :]
        assert all(timeout_s <= latency < timeout_s + 2.0 for latency in slow), got
