"""Admission on a real stack: one mocker worker of 8 KV blocks, the stock frontend, our
processor with a 0.5 s admission deadline.

Request A (~6 blocks of prompt plus its answer) fills the worker; B, a new conversation of
another ~6 blocks, does not fit next to it. While A is short, B waits in the admission queue
and is placed when A ends; while A runs far past B's deadline, B is refused with the
``Unavailable`` marker (503 at our gateway) instead of queueing in the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from deploy.local_stack import LocalStack, StackConfig
from tests.integration.processor_util import chat, metric, poll, running_stack, scrape, trace_of

pytestmark = pytest.mark.integration


def _prompt(tag: str) -> str:
    # ~345 tokens with the chat template (6 blocks), distinct from the first block on
    return f"request {tag}: " + "lorem ipsum dolor sit amet " * 17


@pytest.fixture(scope="module")
def full_worker() -> Iterator[LocalStack]:
    config = StackConfig(
        workers=1,
        speedup=1.0,
        gpu_blocks=8,
        processor_env={"AKR_PROCESSOR_ADMISSION_DEADLINE_S": "0.5"},
    )
    with running_stack(config) as running:
        yield running


def _active(stack: LocalStack) -> float:
    return scrape(stack.processor_metrics_url).get(("akr_processor_active_requests", ()), 0.0)


def test_a_new_conversation_waits_for_room_then_runs(full_worker: LocalStack) -> None:
    stack = full_worker
    with ThreadPoolExecutor(1) as pool:
        a = pool.submit(
            chat, stack.frontend_url, stack.model_name, _prompt("a"), max_tokens=12, timeout=60
        )
        poll("A running", lambda: _active(stack) >= 1, 30)
        rid_b, usage_b = chat(stack.frontend_url, stack.model_name, _prompt("b"), max_tokens=4)
        rid_a, _ = a.result()
    assert usage_b["completion_tokens"] == 4
    samples = scrape(stack.processor_metrics_url)
    assert metric(samples, "akr_processor_admission_wait_seconds_count") >= 1
    trace_a, trace_b = trace_of(stack, rid_a), trace_of(stack, rid_b)
    assert trace_b.worker_id == trace_a.worker_id


def test_a_new_conversation_is_refused_at_its_deadline(full_worker: LocalStack) -> None:
    stack = full_worker
    body = {
        "model": stack.model_name,
        "messages": [{"role": "user", "content": _prompt("d")}],
        "max_tokens": 4,
    }
    with ThreadPoolExecutor(1) as pool:
        a = pool.submit(
            chat, stack.frontend_url, stack.model_name, _prompt("c"), max_tokens=150, timeout=120
        )
        poll("A running", lambda: _active(stack) >= 1, 30)
        resp = httpx.post(f"{stack.frontend_url}/v1/chat/completions", json=body, timeout=30)
        a.result()
    assert resp.status_code != 200
    assert resp.status_code == 503, resp.text  # Dynamo's HttpError(503); text is not passed
    samples = scrape(stack.processor_metrics_url)
    assert metric(samples, "akr_processor_unavailable_total", reason="admission_deadline") >= 1
    assert metric(samples, "akr_processor_requests_total", outcome="unavailable") >= 1
