"""Latency histograms resolve every latency the settings allow: a value above the top finite
bucket lands in +Inf, and histogram_quantile then reads that top bound however long the
request really took (a p99 of "60 s" for TTFTs of five minutes)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from frontend.config import GatewayConfig
from frontend.metrics import GatewayMetrics
from processor.config import ProcessorConfig
from processor.metrics import ProcessorMetrics


def _finite_bucket_holds(registry: CollectorRegistry, family: str, value_labels: str) -> bool:
    """Whether the lowest bucket counting the one observation of ``family`` is finite."""
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(f"{family}_bucket{{") and value_labels in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            if float(line.rsplit(" ", 1)[1]) >= 1:
                return le != "+Inf"
    raise AssertionError(f"no {family} bucket in the exposition")


def test_processor_ttft_and_e2e_resolve_the_longest_first_token_wait() -> None:
    """A request may wait first_token_timeout_s for each of its 1 + max_retries attempts
    (360 s by default) and still be answered."""
    cfg = ProcessorConfig()
    longest_s = (cfg.max_retries + 1) * cfg.first_token_timeout_s
    m = ProcessorMetrics()
    m.ttft.observe(longest_s)
    m.e2e.observe(longest_s)
    assert _finite_bucket_holds(m.registry, "akr_processor_ttft_seconds", "")
    assert _finite_bucket_holds(m.registry, "akr_processor_e2e_seconds", "")


def test_gateway_upstream_latency_resolves_its_read_timeout() -> None:
    """The gateway waits up to upstream_read_timeout_s (400 s by default) for the headers."""
    m = GatewayMetrics()
    m.observe_upstream("/v1/chat/completions", GatewayConfig().upstream_read_timeout_s)
    assert _finite_bucket_holds(
        m.registry, "akr_gateway_upstream_latency_seconds", 'route="/v1/chat/completions"'
    )
