"""Every metric the dashboard and recording rules use appears in the components' real output.

Starts a real local stack (2 simulated workers), sends a few requests with NAT-style hints and one
rejected hint through the gateway, then scrapes the processor, the gateway, the stock frontend and
the shared router (the stack runs one, so its panel is checked too). A name counts as present when a
sample carries it or when the exposition declares it (``# TYPE``): labelled counters without
children yet (worker errors, upstream errors) export their declaration before their first increment.
A ``_bucket``/``_sum``/``_count`` name must belong to a family declared as a histogram, a ``_total``
name to a counter.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from deploy.local_stack import LocalStack, StackConfig, free_port
from deploy.monitoring import names
from frontend.metrics import UPSTREAM_ERROR_KINDS

pytestmark = pytest.mark.integration

_SUFFIXES = {
    "_bucket": "histogram",
    "_sum": "histogram",
    "_count": "histogram",
    "_total": "counter",
}


def exposed(text: str) -> set[str]:
    """Series names a Prometheus server can query from one /metrics text."""
    out: set[str] = set()
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            types[family] = kind.strip()
        elif line and not line.startswith("#"):
            out.add(line.split("{", 1)[0].split(" ", 1)[0])
    for family, kind in types.items():
        if kind == "histogram":
            out |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
        elif kind == "counter":
            # prometheus_client declares "x_total" as family "x" in older versions,
            # "x_total" in newer ones.
            out.add(family if family.endswith("_total") else f"{family}_total")
        else:
            out.add(family)
    # Suffixed names must come from a family of the right type.
    for name in list(out):
        for suffix, kind in _SUFFIXES.items():
            if name.endswith(suffix):
                base = name[: -len(suffix)]
                declared = types.get(base) or types.get(name)
                if (
                    declared is not None
                    and declared != kind
                    and not (kind == "counter" and declared == "counter")
                ):
                    out.discard(name)
    return out


def post(url: str, body: dict) -> int:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def test_dashboard_and_rule_metrics_exist_in_real_output() -> None:
    raw, _recorded = names.used_names()
    router_port = free_port()  # the shared router too, so its panel is held to real output
    config = StackConfig(
        workers=2, router_component=True, router_env={"AKR_ROUTER_METRICS_PORT": str(router_port)}
    )
    with LocalStack(config) as stack:
        url = f"{stack.gateway_url}/v1/chat/completions"
        context = "You are a careful agent. " * 40
        for turn in range(4):
            body = {
                "model": stack.model_name,
                "messages": [
                    {"role": "system", "content": context},
                    {"role": "user", "content": f"step {turn}"},
                ],
                "max_tokens": 4,
                "nvext": {
                    "agent_hints": {
                        "prefix_id": "monitoring-1",
                        "total_requests": 4,
                        "osl": 16,
                        "iat": 50,
                        "latency_sensitivity": 1.0,
                        "priority": 1,
                    },
                    "cache_control": {"type": "ephemeral", "ttl": "30s"},
                },
            }
            assert post(url, body) == 200
        bad = {
            "model": stack.model_name,
            "messages": [{"role": "user", "content": "x"}],
            "nvext": {"agent_hints": {"total_requests": "many"}},
        }
        assert post(url, bad) == 400
        outputs = {
            "processor": scrape(stack.processor_metrics_url),
            "gateway": scrape(f"{stack.gateway_url}/metrics"),
            "frontend": scrape(f"{stack.frontend_url}/metrics"),
            "router": scrape(f"http://127.0.0.1:{router_port}/metrics"),
        }
    available = set().union(*(exposed(text) for text in outputs.values()))
    missing = sorted(raw - available)
    assert not missing, f"used by the dashboard/rules but absent from real /metrics: {missing}"
    # The routing panels have data after hinted traffic, not just declarations.
    samples = outputs["processor"]
    assert "akr_processor_decisions_total{reason=" in samples
    assert (
        "akr_processor_cached_tokens_total" in samples
        and "akr_processor_ttft_seconds_bucket" in samples
    )
    assert "akr_gateway_rejects_total{field=" in outputs["gateway"]
    # AkrGatewayNotReady's gauge says ready on a serving stack; AkrGatewayUpstreamErrors'
    # counter has each kind's series from the start (a first burst is then seen by rate()).
    assert "\nakr_gateway_ready 1.0\n" in outputs["gateway"]
    for kind in UPSTREAM_ERROR_KINDS:
        assert f'akr_gateway_upstream_errors_total{{kind="{kind}"}} 0.0' in outputs["gateway"]
    # The shared router was found: the AkrRouterUnavailable gauge is back at 1 after start-up.
    assert "\nakr_processor_router_available 1.0\n" in samples
    assert "akr_router_decisions_total{reason=" in outputs["router"]
    assert "akr_router_worker_prefill_ratio{worker=" in outputs["router"]


def test_exposed_suffix_rules() -> None:
    text = (
        '# TYPE a_seconds histogram\na_seconds_bucket{le="1"} 1\n'
        "# TYPE b counter\n"
        "# TYPE c gauge\nc 1\n"
    )
    got = exposed(text)
    assert {"a_seconds_bucket", "a_seconds_sum", "a_seconds_count", "b_total", "c"} <= got
    assert "c_total" not in got and "c_bucket" not in got
