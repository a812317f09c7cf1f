"""Prometheus metrics of the standalone router component (``python -m router``).

Why a scrape-time collector: the router's state already counts everything (``Router.stats``,
``LoadTracker``), so nothing is added to the decision path; the families are built from those
numbers when /metrics is read. In the default deployment (router in the processor) the
processor exports the same state as ``akr_processor_claims`` / ``akr_processor_tracked_prefixes``;
with a shared router those processor gauges and its feedback timeouts read 0 and these are the
ones to watch.

Exposed: ``akr_router_decisions_total{reason}``, ``akr_router_prefixes``,
``akr_router_claiming_prefixes``, ``akr_router_prefix_evictions_total``,
``akr_router_prefix_expirations_total``, ``akr_router_pending_feedback``,
``akr_router_feedback_total{kind}`` (dropped / timeout / failure / unmeasured / unknown),
``akr_router_requests_in_flight``, ``akr_router_kv_hold_ms``,
``akr_router_worker_prefill_ratio{worker}`` (the learner's
prefill time of each worker over the model's: 2 = twice as slow).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from router.service import RouterService

KV_HOLD_HELP = (
    "How long a request holds its KV blocks (ms): the decode time of finished requests, "
    "averaged over about the last 50. The KV-full wait is in units of it."
)
CLAIMS_HELP = (
    "Conversations claiming their home's KV blocks: a live cache pin, or a return expected "
    "(from the iat hint, or the gap learned for inferred conversations)."
)

_FEEDBACK_KINDS = {
    "dropped": "feedback_dropped",
    "timeout": "feedback_timeouts",
    "failure": "feedback_failures",
    "unmeasured": "feedback_unmeasured",
    "unknown": "feedback_unknown",
}


class RouterCollector:
    """Reads one ``RouterService`` when scraped."""

    def __init__(self, service: RouterService) -> None:
        self.service = service

    def describe(self) -> list[Metric]:
        return []  # collect() is cheap and always current

    def collect(self) -> Iterator[Metric]:
        stats = self.service.router.stats()
        c = CounterMetricFamily(
            "akr_router_decisions",
            "Requests placed, by reason (a request held for admission is counted once placed).",
            labels=["reason"],
        )
        for reason, n in sorted(stats["reasons"].items()):
            c.add_metric([reason], n)
        yield c
        yield GaugeMetricFamily(
            "akr_router_prefixes", "Prefixes in the router's table.", value=stats["prefixes"]
        )
        yield GaugeMetricFamily(
            "akr_router_claiming_prefixes",
            CLAIMS_HELP,
            value=stats["claiming_prefixes"],
        )
        yield CounterMetricFamily(
            "akr_router_prefix_evictions",
            "Prefixes evicted from the full table (least recently seen).",
            value=stats["prefix_evictions"],
        )
        yield CounterMetricFamily(
            "akr_router_prefix_expirations",
            "Prefixes removed because their conversation ended: its last expected request "
            "came, or its pin or claim ran out with no request to come, or it went idle.",
            value=stats["prefix_expirations"],
        )
        yield GaugeMetricFamily(
            "akr_router_pending_feedback",
            "Decisions waiting for their latency feedback.",
            value=stats["pending_feedback"],
        )
        c = CounterMetricFamily(
            "akr_router_feedback",
            "Feedback not learned as a normal report, by kind.",
            labels=["kind"],
        )
        for kind, key in _FEEDBACK_KINDS.items():
            c.add_metric([kind], stats[key])
        yield c
        yield GaugeMetricFamily(
            "akr_router_kv_hold_ms", KV_HOLD_HELP, value=self.service.load.hold_ms
        )
        yield GaugeMetricFamily(
            "akr_router_requests_in_flight",
            "Requests placed by this router and not finished.",
            value=len(self.service.load),
        )
        g = GaugeMetricFamily(
            "akr_router_worker_prefill_ratio",
            "The learner's prefill time of each worker over the router's model (1 = as "
            "predicted, 2 = twice as slow).",
            labels=["worker"],
        )
        for worker, ratio in sorted(self.service.router.bandit.prefill_ratios().items()):
            g.add_metric([f"{worker:x}"], ratio)
        yield g


def serve_metrics(service: RouterService, port: int, host: str = "127.0.0.1") -> CollectorRegistry:
    """Serve /metrics for ``service`` from a daemon thread (prometheus_client's server)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(service))
    start_http_server(port, addr=host, registry=registry)
    return registry
