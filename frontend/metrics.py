"""Prometheus metrics of the gateway, on a registry of its own (one per app, test-friendly)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Upstream time to response headers: ~1 ms (overhead) up to minutes (long prefill queues).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 120.0, 300.0)


class GatewayMetrics:
    """Requests by route/status, hint presence by field, rejects by field, upstream latency."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("akr_gateway_requests", "Requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.hints = Counter("akr_gateway_hints",
                             "Requests carrying each hint field (after validation)", ["field"],
                             registry=r)
        self.rejects = Counter("akr_gateway_rejects",
                               "Requests rejected by the gateway, by offending field",
                               ["field"], registry=r)
        self.upstream_latency = Histogram(
            "akr_gateway_upstream_latency_seconds",
            "Time from sending to the upstream until its response headers", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter("akr_gateway_upstream_errors",
                                       "Upstream failures by kind", ["kind"], registry=r)
        self.dropped_headers = Counter("akr_gateway_dropped_pin_headers",
                                       "Worker-pinning client headers dropped", registry=r)
        self.in_flight = Gauge("akr_gateway_in_flight", "Requests being proxied", registry=r)
        self.trace_dropped = Gauge("akr_gateway_trace_dropped",
                                   "Trace records dropped (queue full)", registry=r)
        self._req_children: dict[tuple[str, int], Counter] = {}
        self._hint_children: dict[str, Counter] = {}

    def count_request(self, route: str, status: int) -> None:
        child = self._req_children.get((route, status))
        if child is None:
            child = self._req_children[(route, status)] = self.requests.labels(route, str(status))
        child.inc()

    def count_hint(self, field: str) -> None:
        child = self._hint_children.get(field)
        if child is None:
            child = self._hint_children[field] = self.hints.labels(field)
        child.inc()
