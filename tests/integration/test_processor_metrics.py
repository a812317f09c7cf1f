"""The processor's Prometheus endpoint is scraped and its values match what the test sent."""

from __future__ import annotations

import pytest

from deploy.local_stack import LocalStack
from tests.integration.processor_util import (
    chat,
    engine_reports,
    metric,
    per_worker,
    poll,
    scrape,
)

pytestmark = pytest.mark.integration

N = 8


def test_metrics_match_the_requests_sent(stack: LocalStack) -> None:
    url = stack.processor_metrics_url
    before = scrape(url)
    usages = []
    for i in range(N):
        _, usage = chat(
            stack.gateway_url if i % 2 else stack.frontend_url,
            stack.model_name,
            f"metrics probe {i}: " + "lorem ipsum " * (10 * i + 1),
            max_tokens=3 + i,
            stream=bool(i % 3),
        )
        usages.append(usage)

    def settled() -> dict | None:
        now = scrape(url)
        done = metric(now, "akr_processor_requests_total", outcome="ok") - metric(
            before, "akr_processor_requests_total", outcome="ok"
        )
        return now if done >= N else None

    after = poll(f"{N} finished requests in the metrics", settled, 10.0)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    prompt = sum(u["prompt_tokens"] for u in usages)
    output = sum(u["completion_tokens"] for u in usages)
    assert output == sum(3 + i for i in range(N))
    assert delta("akr_processor_requests_total", outcome="ok") == N
    assert delta("akr_processor_requests_total", outcome="error") == 0
    assert delta("akr_processor_prompt_tokens_total") == prompt
    assert delta("akr_processor_output_tokens_total") == output
    cached = [(u.get("prompt_tokens_details") or {}).get("cached_tokens") for u in usages]
    if all(c is not None for c in cached):  # the frontend passes the worker's cache hit on
        assert delta("akr_processor_cached_tokens_total") == sum(cached)
    assert delta("akr_processor_ttft_seconds_count") == N
    assert delta("akr_processor_e2e_seconds_count") == N
    assert delta("akr_processor_itl_seconds_count") == N  # every request had >= 2 tokens
    assert delta("akr_processor_decision_seconds_count") == N
    assert delta("akr_processor_decisions_total") == N
    assert delta("akr_processor_retries_total") == 0
    assert metric(after, "akr_processor_active_requests") == 0
    assert metric(after, "akr_processor_workers") == 2
    ratio = metric(after, "akr_processor_cached_tokens_total") / metric(
        after, "akr_processor_prompt_tokens_total"
    )
    assert metric(after, "akr_processor_kv_hit_ratio") == pytest.approx(ratio)
    # Decisions are labelled by a live worker and a documented reason.
    labels = {
        dict(lbl)["reason"]
        for (name, lbl), v in after.items()
        if name == "akr_processor_decisions_total" and v
    }
    assert labels <= {"sticky", "overlap", "load", "exploration", "pin"}


def test_capacity_comes_from_the_workers_own_cards(stack: LocalStack) -> None:
    """No AKR_ROUTER_WORKER_CAPACITY_BLOCKS is set on this stack (the default is 16384): the
    processor reads each mocker's ``total_kv_blocks`` (``--num-gpu-blocks-override``) from
    its model card over the loopback event plane, and its engine's queue from the
    forward-pass metrics (nothing held back on this idle stack)."""
    capacity, waiting = engine_reports(stack.processor_metrics_url, "akr_processor", 2)
    assert sorted(capacity.values()) == [stack.config.gpu_blocks] * 2
    assert waiting.keys() == capacity.keys() and set(waiting.values()) == {0.0}


def test_learned_prefill_ratio_is_exported_per_live_worker(stack: LocalStack) -> None:
    """The learner's per-worker speed reaches /metrics, keyed like the other per-worker gauges,
    for every live worker once the router has seen traffic."""
    chat(stack.gateway_url, stack.model_name, "prefill ratio probe", max_tokens=2)
    capacity, _ = engine_reports(stack.processor_metrics_url, "akr_processor", 2)

    def exported() -> dict[str, float] | None:
        ratios = per_worker(
            scrape(stack.processor_metrics_url), "akr_processor_worker_prefill_ratio"
        )
        return ratios if ratios.keys() == capacity.keys() else None

    ratios = poll("a prefill ratio per worker", exported, 10.0)
    assert all(0.0 < v < 10.0 for v in ratios.values()), ratios
