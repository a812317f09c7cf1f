"""End to end on the real stack: gateway -> stock frontend -> processor -> mocker workers."""

from __future__ import annotations

import json

import httpx
import pytest

from deploy.local_stack import LocalStack, StackConfig
from tests.conftest import pids_alive, wait_for_trace

pytestmark = pytest.mark.integration

CHAT = {"messages": [{"role": "user", "content": "plan the tool call for the search agent"}]}


def _chat(base: str, model: str, *, stream: bool, max_tokens: int = 6) -> tuple[str, dict]:
    body = {**CHAT, "model": model, "max_tokens": max_tokens, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
        text, usage = "", {}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=30) as resp:
            assert resp.status_code == 200, resp.read()
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                for choice in chunk.get("choices", []):
                    text += choice.get("delta", {}).get("content") or ""
                usage = chunk.get("usage") or usage
        return text, usage
    resp = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    return data["choices"][0]["message"]["content"], data["usage"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("entry", ["gateway", "frontend"])
def test_chat_returns_tokens_and_usage(stack: LocalStack, entry: str, stream: bool) -> None:
    base = stack.gateway_url if entry == "gateway" else stack.frontend_url
    text, usage = _chat(base, stack.model_name, stream=stream)
    assert text
    assert usage["completion_tokens"] == 6
    assert usage["prompt_tokens"] > 0


def test_completions_and_models_pass_through(stack: LocalStack) -> None:
    resp = httpx.post(
        f"{stack.gateway_url}/v1/completions",
        json={"model": stack.model_name, "prompt": "agent step", "max_tokens": 3},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 3
    models = httpx.get(f"{stack.gateway_url}/v1/models", timeout=10).json()
    assert stack.model_name in [m["id"] for m in models["data"]]


def worker_instance_ids(stack: LocalStack) -> set[int]:
    """Instance ids of the mocker workers registered in this stack's discovery directory."""
    ids = set()
    for path in (stack.file_kv / "v1" / "instances").iterdir():
        if path.name.startswith("workers%2Fbackend%2Fgenerate%2F"):
            ids.add(int(json.loads(path.read_text())["instance_id"]))
    return ids


def test_request_reaches_a_worker_through_the_processor(stack: LocalStack) -> None:
    """The processor's trace names the worker it forwarded to, and that is a live mocker."""
    _chat(stack.gateway_url, stack.model_name, stream=False, max_tokens=4)
    records = wait_for_trace(stack, lambda r: r.output_tokens == 4)
    assert records[-1].worker_id in worker_instance_ids(stack)
    assert records[-1].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_client_request_id_comes_back_through_the_gateway(stack: LocalStack, stream: bool) -> None:
    """The stock frontend echoes x-request-id; through the gateway the client still gets it."""
    body = {**CHAT, "model": stack.model_name, "max_tokens": 2, "stream": stream}
    rid = f"e2e-request-id-{stream}"
    for base in (stack.frontend_url, stack.gateway_url):
        with httpx.stream(
            "POST",
            f"{base}/v1/chat/completions",
            json=body,
            timeout=30,
            headers={"x-request-id": rid},
        ) as resp:
            resp.read()
            assert resp.status_code == 200
            assert resp.headers.get("x-request-id") == rid, base


def test_two_stacks_run_side_by_side_without_seeing_each_other() -> None:
    one = LocalStack(StackConfig(workers=1, arm="round-robin", supervise=False, keep_workdir=False))
    two = LocalStack(StackConfig(workers=3, arm="round-robin"))
    with one, two:
        started = one.pids() + two.pids()
        ids_one = {p.name for p in (one.file_kv / "v1" / "instances").iterdir()}
        ids_two = {p.name for p in (two.file_kv / "v1" / "instances").iterdir()}
        assert ids_one and ids_two and not ids_one & ids_two
        generate = [n for n in ids_two if n.startswith("workers%2Fbackend%2Fgenerate%2F")]
        assert len(generate) == 3
        # Killing stack one's workers leaves stack two serving.
        for pid in one.worker_pids():
            one.kill(next(p.name for p in one.procs if p.popen.pid == pid))
        text, _ = _chat(two.url, two.model_name, stream=False)
        assert text
    assert pids_alive(started) == []
