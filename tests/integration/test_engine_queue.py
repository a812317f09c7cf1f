"""Full workers: the engine's own report, and our count of the blocks in flight.

One mocker worker with 8 KV blocks (512 tokens). Request A (~6 blocks of prompt, a long
answer) holds most of them; request B (another ~6 blocks) cannot be scheduled until A ends,
so the engine reports it as held back in its forward-pass metrics. The processor reads that
over the loopback event plane: its gauge shows the waiting request on the worker, keyed by the
same worker id the processor routes to. The second test checks the router's own count of
the blocks in flight (router/load.py, the KV-full term of router/cost.py) end to end.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from deploy.local_stack import LocalStack, StackConfig
from router.load import HOLD_PRIOR_MS
from tests.integration.processor_util import chat, poll, running_stack, scrape, trace_of

pytestmark = pytest.mark.integration


def _prompt(tag: str) -> str:
    # ~345 tokens with the chat template (6 blocks), distinct from the first block on
    return f"request {tag}: " + "lorem ipsum dolor sit amet " * 17


@pytest.fixture(scope="module")
def tight_stack() -> Iterator[LocalStack]:
    config = StackConfig(
        workers=1,
        speedup=1.0,
        gpu_blocks=8,
        # B must reach the engine: admission would hold it at the processor (KV full)
        processor_env={"AKR_PROCESSOR_ADMISSION_DEADLINE_S": "0"},
    )
    with running_stack(config) as running:
        yield running


def _waiting(stack: LocalStack) -> dict[str, float]:
    return {
        dict(labels)["worker"]: v
        for (name, labels), v in scrape(stack.processor_metrics_url).items()
        if name == "akr_processor_engine_waiting_requests" and v > 0
    }


def _active(stack: LocalStack) -> float:
    samples = scrape(stack.processor_metrics_url)
    return samples.get(("akr_processor_active_requests", ()), 0.0)


def test_held_back_request_shows_in_the_engine_gauge(tight_stack: LocalStack) -> None:
    stack = tight_stack
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(
            chat, stack.frontend_url, stack.model_name, _prompt("a"), max_tokens=60, timeout=120
        )
        poll("A running", lambda: _active(stack) >= 1, 30)
        b = pool.submit(
            chat, stack.frontend_url, stack.model_name, _prompt("b"), max_tokens=4, timeout=120
        )
        waiting = poll("B held back by the engine", lambda: _waiting(stack), 30, interval_s=0.02)
        (rid_a, usage_a), (rid_b, _) = a.result(), b.result()
    assert usage_a["completion_tokens"] == 60
    (worker,) = waiting  # the one worker, as the processor labels it (hex id)
    trace_a = trace_of(stack, rid_a)
    assert f"{trace_a.worker_id:x}" == worker  # FPM ids are the ids we route to
    trace_b = trace_of(stack, rid_b)
    assert trace_b.ts + trace_b.ttft_ms / 1e3 >= trace_a.ts + trace_a.e2e_ms / 1e3 - 0.05, (
        "B was scheduled only once A released its blocks"
    )


@pytest.fixture(scope="module")
def two_tight_workers() -> Iterator[LocalStack]:
    config = StackConfig(
        workers=2,
        speedup=1.0,
        gpu_blocks=8,
        processor_env={"AKR_ROUTER_BANDIT_ENABLED": "false"},
    )
    with running_stack(config) as running:
        yield running


def test_a_request_that_would_not_fit_leaves_its_cache(two_tight_workers: LocalStack) -> None:
    """A (335 prompt tokens + 60 to answer: 7 blocks) runs on one 8-block worker; B extends A's
    prompt to ~420 tokens, so that worker holds B's first 5 blocks, but B's 2 others do not
    fit next to A's 7. The processor sends B's chained block hashes, the router counts the
    blocks A holds, and B goes to the other worker instead of waiting for A's blocks."""
    stack = two_tight_workers
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(
            chat, stack.frontend_url, stack.model_name, _prompt("a"), max_tokens=60, timeout=120
        )
        poll("A running", lambda: _active(stack) >= 1, 30)
        rid_b, _ = chat(
            stack.frontend_url,
            stack.model_name,
            _prompt("a") + " tool result: " + "dolor sit amet lorem ipsum " * 4,
            max_tokens=4,
        )
        rid_a, _ = a.result()
    trace_a, trace_b = trace_of(stack, rid_a), trace_of(stack, rid_b)
    assert trace_b.worker_id != trace_a.worker_id
    full = {c.worker_id: c.terms["kv_full_ms"] for c in trace_b.candidates}
    # A's 7 blocks + B's 2 new ones overflow the 8-block worker by one: A, the one request
    # there, must end, half a hold on average, at the prior hold while no request has finished
    # (router/cost.py).
    assert full == {trace_a.worker_id: pytest.approx(HOLD_PRIOR_MS / 2), trace_b.worker_id: 0.0}
