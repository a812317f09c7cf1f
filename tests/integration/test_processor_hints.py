"""Hints from every channel reach the router: asserted on the processor's trace.

The trace record's hint fields are the ``RouteRequest`` the router decided on, so a value in
the record is a value the router saw. Channels: body hints through the gateway (NAT's real
client is in test_nat_client.py), ``x-akr-*`` headers through the gateway, and straight to the
stock frontend the ``x-dynamo-session-id`` header, the stock ``nvext.agent_hints`` fields
(``routing.*``) and our annotation encoding.
"""

from __future__ import annotations

import pytest

from deploy.local_stack import LocalStack
from router.hints import AgentHints, encode_annotations
from tests.integration.processor_util import chat, trace_of

pytestmark = pytest.mark.integration

PROMPT = "route this agent turn to the worker holding its cache"


def test_body_hints_and_cache_control_through_gateway(stack: LocalStack) -> None:
    nvext = {
        "agent_hints": {
            "prefix_id": "hints-body",
            "total_requests": 7,
            "iat": 250,
            "osl": 12,
            "priority": 3,
            "latency_sensitivity": 1.5,
        },
        "cache_control": {"type": "ephemeral", "ttl": "3s"},
    }
    rid, _ = chat(stack.gateway_url, stack.model_name, PROMPT, nvext=nvext, max_tokens=5)
    rec = trace_of(stack, rid)
    assert (rec.prefix_id, rec.total_requests, rec.iat_ms, rec.osl) == ("hints-body", 7, 250, 12)
    assert (rec.priority, rec.latency_sensitivity, rec.pin_ttl_s) == (3, 1.5, 3.0)
    assert rec.output_tokens == 5 and rec.worker_id is not None


def test_session_header_straight_to_stock_frontend(stack: LocalStack) -> None:
    rid, _ = chat(
        stack.frontend_url,
        stack.model_name,
        PROMPT,
        headers={"x-dynamo-session-id": "hints-session"},
        max_tokens=4,
    )
    rec = trace_of(stack, rid)
    assert rec.prefix_id == "hints-session"
    assert rec.total_requests == 1 and rec.pin_ttl_s is None


def test_stock_agent_hints_straight_to_stock_frontend(stack: LocalStack) -> None:
    """``osl``/``priority`` pass the stock frontend and arrive as ``routing.*``."""
    rid, _ = chat(
        stack.frontend_url,
        stack.model_name,
        PROMPT,
        nvext={"agent_hints": {"osl": 9, "priority": 2}},
        max_tokens=4,
    )
    rec = trace_of(stack, rid)
    assert (rec.osl, rec.priority) == (9, 2)  # osl from the hint, not max_tokens (4)
    assert rec.prefix_id is None and rec.total_requests == 1


def test_annotations_straight_to_stock_frontend(stack: LocalStack) -> None:
    hints = AgentHints(
        prefix_id="hints-annot",
        total_requests=5,
        osl=11,
        iat_ms=100,
        latency_sensitivity=0.5,
        priority=4,
        pin_type="ephemeral",
        pin_ttl_s=2.5,
    )
    rid, _ = chat(
        stack.frontend_url,
        stack.model_name,
        PROMPT,
        nvext={"annotations": encode_annotations(hints)},
        max_tokens=4,
    )
    rec = trace_of(stack, rid)
    assert (rec.prefix_id, rec.total_requests, rec.osl, rec.iat_ms) == ("hints-annot", 5, 11, 100)
    assert (rec.latency_sensitivity, rec.priority, rec.pin_ttl_s) == (0.5, 4, 2.5)


def test_header_hints_through_gateway(stack: LocalStack) -> None:
    headers = {
        "x-akr-prefix-id": "hints-header",
        "x-akr-total-requests": "6",
        "x-akr-osl": "LOW",
        "x-akr-iat": "HIGH",
        "x-akr-latency-sensitivity": "2.5",
        "x-akr-priority": "-1",
        "x-akr-cache-ttl": "4s",
    }
    rid, _ = chat(stack.gateway_url, stack.model_name, PROMPT, headers=headers, max_tokens=4)
    rec = trace_of(stack, rid)
    assert (rec.prefix_id, rec.total_requests, rec.osl, rec.iat_ms) == ("hints-header", 6, 128, 750)
    assert (rec.latency_sensitivity, rec.priority, rec.pin_ttl_s) == (2.5, -1, 4.0)


def test_body_beats_headers_per_field(stack: LocalStack) -> None:
    rid, _ = chat(
        stack.gateway_url,
        stack.model_name,
        PROMPT,
        nvext={"agent_hints": {"prefix_id": "hints-winner"}},
        headers={"x-akr-prefix-id": "hints-loser", "x-akr-total-requests": "3"},
        max_tokens=4,
    )
    rec = trace_of(stack, rid)
    assert (rec.prefix_id, rec.total_requests) == ("hints-winner", 3)


@pytest.mark.parametrize("entry", ["gateway", "frontend"])
def test_no_hints_get_defaults(stack: LocalStack, entry: str) -> None:
    base = stack.gateway_url if entry == "gateway" else stack.frontend_url
    rid, _ = chat(base, stack.model_name, PROMPT, max_tokens=4)
    rec = trace_of(stack, rid)
    assert rec.prefix_id is None and rec.total_requests == 1
    assert rec.iat_ms is None and rec.pin_ttl_s is None
    assert rec.osl == 4  # max_tokens stands in for the expected output length
    assert (rec.priority, rec.latency_sensitivity) == (0, 0.0)
    assert rec.reason in {"load", "overlap", "exploration"}  # no conversation, no affinity
