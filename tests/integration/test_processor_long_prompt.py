"""Prompts no worker can hold: refused as the request's failure, never a success for the
learner, and without holding the processor's event loop.

One worker with 256 KV blocks of 64 tokens (16,384 tokens). A prompt of ~67k tokens is
refused with 400 (before, the worker's refusal came back as 500 and the processor recorded
``ok`` with a TTFT); a 1.5 MiB prompt (the largest body the stock frontend lets through under
the launcher's ``DYN_HTTP_BODY_LIMIT_MB=2``) is refused without the processor hashing, scoring
and copying its tokens on its loop (before: ~0.6 s per request at 10 MiB); a 10 MiB body gets
413 from the stock frontend and never reaches the processor.
"""

from __future__ import annotations

import time

import httpx
import pytest

from deploy.local_stack import StackConfig
from tests.integration.processor_util import metric, poll, records, running_stack, scrape

pytestmark = pytest.mark.integration


def _lag_above(samples: dict, seconds: str) -> float:
    total = metric(samples, "akr_processor_event_loop_lag_seconds_count")
    under = metric(samples, "akr_processor_event_loop_lag_seconds_bucket", le=seconds)
    return total - under


def test_over_long_prompts_are_refused_fast_and_counted_as_failures() -> None:
    with running_stack(StackConfig(workers=1, gpu_blocks=256)) as stack:
        url = stack.processor_metrics_url
        before = scrape(url)
        for chars in (100_000, 1536 * 1024):
            body = {
                "model": stack.model_name,
                "messages": [{"role": "user", "content": "word7 " * (chars // 6)}],
                "max_tokens": 4,
            }
            lag_before = scrape(url)
            t0 = time.monotonic()
            resp = httpx.post(f"{stack.frontend_url}/v1/chat/completions", json=body, timeout=120)
            elapsed = time.monotonic() - t0
            assert resp.status_code == 400, resp.text
            rec = poll(
                "the refused request's trace record",
                lambda n=chars: [r for r in records(stack) if r.prompt_tokens > n // 2],
                15,
            )[-1]
            lag_after = scrape(url)
            assert rec.finish_reason == "rejected" and "exceeds" in (rec.error or ""), rec
            assert rec.ttft_ms is None and rec.output_tokens == 0 and rec.worker_id is None
            assert rec.e2e_ms is not None and rec.e2e_ms < 50, rec.e2e_ms  # handler's own time
            print(
                f"\n{chars} chars -> {rec.prompt_tokens} tokens: 400 after {elapsed:.2f} s, "
                f"processor {rec.e2e_ms:.1f} ms; loop lag samples > 50 ms: "
                f"{_lag_above(lag_after, '0.05') - _lag_above(lag_before, '0.05'):g}, "
                f"> 100 ms: {_lag_above(lag_after, '0.1') - _lag_above(lag_before, '0.1'):g}"
            )
        huge = {
            "model": stack.model_name,
            "messages": [{"role": "user", "content": "word7 " * (10 * 1024 * 1024 // 6)}],
            "max_tokens": 4,
        }
        resp = httpx.post(f"{stack.frontend_url}/v1/chat/completions", json=huge, timeout=120)
        assert resp.status_code == 413, resp.text
        after = scrape(url)
        for name, labels in (
            ("akr_processor_requests_total", {"outcome": "rejected"}),
            ("akr_processor_requests_total", {"outcome": "ok"}),
            ("akr_processor_ttft_seconds_count", {}),
            ("akr_processor_prompt_tokens_total", {}),  # never given to a worker: no KV hit
        ):
            grew = metric(after, name, **labels) - metric(before, name, **labels)
            assert grew == (2 if labels.get("outcome") == "rejected" else 0), (name, grew)
