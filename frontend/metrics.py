"""Prometheus metrics of the gateway, on a registry of its own (one per gateway, test-friendly).

Why plain counters and a collector: the request path only bumps Python ints in dicts (tens of
nanoseconds, no locks); the Prometheus families are built when /metrics is scraped. The gateway
runs on one event loop thread, so no lock is needed.

Exposed: ``akr_gateway_requests_total{route,status}``, ``akr_gateway_hints_total{field}``
(requests carrying each hint, after validation), ``akr_gateway_rejects_total{field}`` (requests
refused with 4xx, by the field at fault: a hint, the body, the model, the prompt),
``akr_gateway_upstream_errors_total{kind}``, ``akr_gateway_dropped_pin_headers_total``,
``akr_gateway_upstream_latency_seconds{route}`` (histogram, time to upstream response headers,
the wait for an upstream slot included), ``akr_gateway_trace_records_dropped_total{reason}``
(trace records that never reached the file: queue full, unwritable path, disk full, ...),
``akr_gateway_event_loop_lag_seconds`` (histogram, how long ready work waits for the loop),
``akr_gateway_unavailable_total{reason}`` (503 answers), ``akr_gateway_stalled_clients_total``
(clients disconnected for reading nothing), ``akr_gateway_upstream_slots_in_use``,
``akr_gateway_ready`` (the last readiness verdict, 1/0: of a ``/ready`` request or of the
gateway's own probe every 10 s).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from router.loop_lag import LOOP_LAG_BUCKETS

# Upstream time to response headers: ~1 ms (overhead) up to minutes (long prefill queues),
# bounded by the upstream read timeout (400 s by default) plus the wait for a slot.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


# Label values whose series exist at 0 from the start: rate() and increase() count nothing of
# a series born at its first value, so a burst of errors that created one would be invisible.
UPSTREAM_ERROR_KINDS = ("connect", "read", "timeout")
UNAVAILABLE_REASONS = (
    "gateway_busy",
    "too_many_connections",
    "no_worker",
    "no_router",
    "router_timeout",
    "unavailable",
)
SERVER_ERRORS = (500, 502, 503, 504)


class _Histogram:
    __slots__ = ("buckets", "counts", "total")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last = +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        acc, out = 0, []
        for le, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            acc += n
            out.append(("+Inf" if le == float("inf") else repr(le), acc))
        return out


class GatewayMetrics:
    """Requests by route/status, hint presence by field, rejects by field, upstream latency."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.hints: defaultdict[str, int] = defaultdict(int)
        self.rejects: defaultdict[str, int] = defaultdict(int)
        self.upstream_errors: defaultdict[str, int] = defaultdict(int)
        self.dropped_pin_headers = 0
        self.trace_lost: Mapping[str, int] = {}  # the trace writer's losses by reason
        self.latency: dict[str, _Histogram] = {}
        self.loop_lag = _Histogram(LOOP_LAG_BUCKETS)
        self.unavailable: defaultdict[str, int] = defaultdict(int)
        self.stalled_clients = 0
        self.slots_in_use: Callable[[], int] = lambda: 0
        self.ready: bool | None = None  # unknown until the first readiness probe
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors[kind] = 0
        for reason in UNAVAILABLE_REASONS:
            self.unavailable[reason] = 0
        self.registry.register(_Collector(self))

    def start_routes(self, routes: tuple[str, ...]) -> None:
        """The server-error series of ``routes`` at 0 (see ``SERVER_ERRORS``)."""
        for route in routes:
            for status in SERVER_ERRORS:
                self.requests[(route, status)] += 0

    def count_unavailable(self, reason: str) -> None:
        self.unavailable[reason] += 1

    def count_request(self, route: str, status: int) -> None:
        self.requests[(route, status)] += 1

    def count_hint(self, field: str) -> None:
        self.hints[field] += 1

    def reject(self, field: str) -> None:
        self.rejects[field] += 1

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors[kind] += 1

    def observe_upstream(self, route: str, seconds: float) -> None:
        h = self.latency.get(route)
        if h is None:
            h = self.latency[route] = _Histogram()
        h.observe(seconds)


def _counter(
    name: str, doc: str, labels: list[str], counts: Mapping[Any, int]
) -> CounterMetricFamily:
    """A labelled counter family from a dict keyed by one label value or a tuple of them."""
    c = CounterMetricFamily(name, doc, labels=labels)
    for key, n in sorted(counts.items()):
        c.add_metric([str(v) for v in key] if isinstance(key, tuple) else [key], n)
    return c


class _Collector:
    def __init__(self, m: GatewayMetrics) -> None:
        self.m = m

    def describe(self) -> list[Metric]:
        return []  # no description-time families: collect() is cheap and always current

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield _counter(
            "akr_gateway_requests",
            "Requests answered, by route and status",
            ["route", "status"],
            m.requests,
        )
        yield _counter(
            "akr_gateway_hints",
            "Requests carrying each hint field (after validation; a pin without a TTL counts "
            "under pin_ttl_s too, with the default TTL filled in)",
            ["field"],
            m.hints,
        )
        yield _counter(
            "akr_gateway_rejects",
            "Requests rejected by the gateway, by offending field",
            ["field"],
            m.rejects,
        )
        yield _counter(
            "akr_gateway_upstream_errors", "Upstream failures by kind", ["kind"], m.upstream_errors
        )
        yield CounterMetricFamily(
            "akr_gateway_dropped_pin_headers",
            "Worker-pinning client headers dropped",
            value=m.dropped_pin_headers,
        )
        yield _counter(
            "akr_gateway_trace_records_dropped",
            "Trace records that never reached the trace file, by reason",
            ["reason"],
            m.trace_lost,
        )
        yield _counter(
            "akr_gateway_unavailable",
            "503 answers (retry later), by reason",
            ["reason"],
            m.unavailable,
        )
        yield CounterMetricFamily(
            "akr_gateway_stalled_clients",
            "Clients disconnected because they read nothing for the stall timeout",
            value=m.stalled_clients,
        )
        yield GaugeMetricFamily(
            "akr_gateway_upstream_slots_in_use",
            "Upstream slots taken (requests in flight to the stock frontend)",
            value=m.slots_in_use(),
        )
        if m.ready is not None:
            yield GaugeMetricFamily(
                "akr_gateway_ready", "Last readiness verdict (1 ready, 0 not)", value=int(m.ready)
            )
        h = HistogramMetricFamily(
            "akr_gateway_upstream_latency_seconds",
            "Time from the request's turn to go upstream (its wait for an upstream slot "
            "included) until the upstream's response headers",
            labels=["route"],
        )
        for route, hist in sorted(m.latency.items()):
            h.add_metric([route], hist.cumulative(), hist.total)
        yield h
        h = HistogramMetricFamily(
            "akr_gateway_event_loop_lag_seconds",
            "How late a periodic timer fires on the gateway's event loop: "
            "the wait of every ready callback for the loop",
        )
        h.add_metric([], m.loop_lag.cumulative(), m.loop_lag.total)
        yield h
