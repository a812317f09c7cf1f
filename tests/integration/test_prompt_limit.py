"""The gateway's prompt limit follows the fleet: a worker that joins after start-up with a larger
KV capacity raises it, without restarting the gateway or the processor.

One worker of 64 KV blocks of 64 tokens (4,096 tokens) at start, so the gateway refuses a text
prompt over 4,096 x 8 = 32,768 bytes by itself. A prompt of 36,000 bytes (7,201 tokens here)
is refused; once a worker of 256 blocks (16,384 tokens) has joined, the same prompt is served.
"""

from __future__ import annotations

import httpx
import pytest

from deploy.local_stack import StackConfig
from tests.integration.processor_util import poll, running_stack

pytestmark = pytest.mark.integration

PROMPT = "plan the tool call for the search agent " * 900  # 36,000 bytes, 7,201 tokens


def _send(base: str, model: str) -> tuple[int, str | None]:
    """(status, error code) of one chat completion with ``PROMPT``."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2}
    resp = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
    code = resp.json().get("error", {}).get("code") if resp.status_code != 200 else None
    return resp.status_code, code


def test_a_worker_that_joins_later_raises_the_gateways_prompt_limit() -> None:
    with running_stack(StackConfig(workers=1, gpu_blocks=64)) as stack:
        assert _send(stack.gateway_url, stack.model_name) == (400, "context_length_exceeded")
        stack.add_worker(gpu_blocks=256)
        poll(
            "the gateway to serve a prompt the new worker holds",
            lambda: _send(stack.gateway_url, stack.model_name)[0] == 200,
            timeout_s=45.0,
            interval_s=0.5,
        )
        health = httpx.get(f"{stack.processor_metrics_url.rsplit('/', 1)[0]}/health").json()
        assert health["prompt_limit"] == 256 * 64, health
