"""The error and outcome series that rules, dashboard and alerts read exist at 0 from the
start. Why: rate() and increase() count nothing of a series born at its first value, so a
burst of 503s or upstream errors that creates its series is invisible (akr:requests:rate1m,
akr:gateway_requests_5xx:rate1m, akr:gateway_upstream_errors:rate1m read 0 through it)."""

from __future__ import annotations

from prometheus_client import generate_latest

from frontend.config import GatewayConfig
from frontend.gateway import POST_ROUTES, Gateway
from processor.metrics import ProcessorMetrics


def test_processor_outcomes_and_unavailable_reasons_start_at_zero() -> None:
    text = generate_latest(ProcessorMetrics().registry).decode()
    for outcome in ("ok", "cancelled", "rejected", "unavailable", "error"):
        assert f'akr_processor_requests_total{{outcome="{outcome}"}} 0.0' in text, outcome
    for reason in (
        "no_worker",
        "no_router",
        "router_timeout",
        "admission_deadline",
        "admission_queue_full",
    ):
        assert f'akr_processor_unavailable_total{{reason="{reason}"}} 0.0' in text, reason


def test_gateway_error_series_start_at_zero() -> None:
    gw = Gateway(GatewayConfig(upstream_url="http://127.0.0.1:9", host="127.0.0.1", port=0))
    text = generate_latest(gw.metrics.registry).decode()
    for route in POST_ROUTES:
        for status in (500, 502, 503, 504):
            line = f'akr_gateway_requests_total{{route="{route}",status="{status}"}} 0.0'
            assert line in text, line
    for kind in ("connect", "read", "timeout"):
        assert f'akr_gateway_upstream_errors_total{{kind="{kind}"}} 0.0' in text, kind
    for reason in ("gateway_busy", "no_worker", "no_router", "router_timeout", "unavailable"):
        assert f'akr_gateway_unavailable_total{{reason="{reason}"}} 0.0' in text, reason
