"""The hint contract: validation, precedence, annotation round trip, totality of decoding."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router import hints as H
from router.hints import AgentHints, HintError

NAT_BODY = {  # what nvidia-nat-core 1.9.0's transport sends
    "agent_hints": {
        "latency_sensitivity": 2.0,
        "osl": 512,
        "priority": 2,
        "prefix_id": "sess-123",
        "total_requests": 10,
        "iat": 250,
    },
    "cache_control": {"type": "ephemeral", "ttl": "3s"},
}


def test_nat_body_parses() -> None:
    h = H.parse_agent_hints(NAT_BODY["agent_hints"], NAT_BODY["cache_control"])
    assert h == AgentHints(
        prefix_id="sess-123",
        total_requests=10,
        osl=512,
        iat_ms=250,
        latency_sensitivity=2.0,
        priority=2,
        pin_type="ephemeral",
        pin_ttl_s=3.0,
    )


@pytest.mark.parametrize(
    "level,osl,iat",
    [("LOW", 128, 50), ("MEDIUM", 512, 250), ("HIGH", 2048, 750), ("high", 2048, 750)],
)
def test_levels(level: str, osl: int, iat: int) -> None:
    h = H.parse_agent_hints({"osl": level, "iat": level}, None)
    assert (h.osl, h.iat_ms) == (osl, iat)


def test_none_and_unknown_keys_are_tolerated() -> None:
    assert H.parse_agent_hints(None, None).is_empty()
    h = H.parse_agent_hints({"prefix_id": None, "foo": {"x": 1}, "strict_priority": True}, None)
    assert h.is_empty()


@pytest.mark.parametrize(
    "hints,field",
    [
        ({"total_requests": 0}, "total_requests"),
        ({"total_requests": True}, "total_requests"),
        ({"total_requests": 1.5}, "total_requests"),
        ({"total_requests": "3"}, "total_requests"),
        ({"total_requests": 10**30}, "total_requests"),
        ({"osl": 0}, "osl"),
        ({"osl": "HUGE"}, "osl"),
        ({"osl": 2.0}, "osl"),
        ({"iat": -5}, "iat"),
        ({"iat": False}, "iat"),
        ({"latency_sensitivity": -0.1}, "latency_sensitivity"),
        ({"latency_sensitivity": float("nan")}, "latency_sensitivity"),
        ({"latency_sensitivity": float("inf")}, "latency_sensitivity"),
        ({"latency_sensitivity": "1"}, "latency_sensitivity"),
        ({"latency_sensitivity": True}, "latency_sensitivity"),
        ({"latency_sensitivity": 10**400}, "latency_sensitivity"),
        ({"priority": 1.0}, "priority"),
        ({"priority": 2**40}, "priority"),
        ({"prefix_id": ""}, "prefix_id"),
        ({"prefix_id": "a" * 257}, "prefix_id"),
        ({"prefix_id": "a b"}, "prefix_id"),
        ({"prefix_id": "sess\n1"}, "prefix_id"),
        ({"prefix_id": "ünï"}, "prefix_id"),
        ({"prefix_id": 5}, "prefix_id"),
    ],
)
def test_invalid_agent_hints(hints: dict, field: str) -> None:
    with pytest.raises(HintError) as ei:
        H.parse_agent_hints(hints, None)
    assert ei.value.field == f"nvext.agent_hints.{field}"
    assert ei.value.reason


def test_prefix_id_charset_and_length() -> None:
    pid = "Az09._:@/+=-" + "x" * 244
    assert len(pid) == 256
    assert H.parse_agent_hints({"prefix_id": pid}, None).prefix_id == pid


@pytest.mark.parametrize(
    "ttl,seconds",
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        ("24h", 86400.0),
        (" 3s ", 3.0),
        ("1.5s", 1.5),
        (12, 12.0),
        (0.5, 0.5),
        ("7", 7.0),
    ],
)
def test_parse_ttl(ttl: object, seconds: float) -> None:
    assert H.parse_ttl(ttl) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "ttl",
    [
        "0s",
        "25h",
        "-1s",
        "1d",
        "s",
        "",
        "abc",
        "1e3s",
        None,
        True,
        [],
        float("nan"),
        float("inf"),
        10**100,
        "99999999999999h",
    ],
)
def test_parse_ttl_rejects(ttl: object) -> None:
    with pytest.raises(HintError):
        H.parse_ttl(ttl)


def test_cache_control() -> None:
    assert H.parse_agent_hints(None, {"type": "ephemeral"}).pin_ttl_s == H.DEFAULT_PIN_TTL_S
    with pytest.raises(HintError) as ei:
        H.parse_agent_hints(None, {"type": "persistent", "ttl": "5m"})
    assert ei.value.field == "nvext.cache_control.type"
    with pytest.raises(HintError) as ei:
        H.parse_agent_hints(None, {"type": "ephemeral", "ttl": "5 minutes"})
    assert ei.value.field == "nvext.cache_control.ttl"
    for unhashable in (["ephemeral"], {"ephemeral": 1}):
        with pytest.raises(HintError) as ei:
            H.parse_agent_hints(None, {"type": unhashable})
        assert ei.value.field == "nvext.cache_control.type"
    with pytest.raises(HintError) as ei:
        H.parse_agent_hints(None, "ephemeral")
    assert ei.value.field == "nvext.cache_control"
    with pytest.raises(HintError) as ei:
        H.parse_agent_hints([1], None)
    assert ei.value.field == "nvext.agent_hints"


def test_header_hints() -> None:
    h = H.parse_header_hints(
        {
            "x-akr-prefix-id": "p1",
            "x-akr-total-requests": "4",
            "x-akr-iat": "MEDIUM",
            "x-akr-osl": "100",
            "x-akr-latency-sensitivity": "0.5",
            "x-akr-priority": "-3",
            "x-akr-cache-ttl": "30s",
        }
    )
    assert h == AgentHints(
        prefix_id="p1",
        total_requests=4,
        osl=100,
        iat_ms=250,
        latency_sensitivity=0.5,
        priority=-3,
        pin_type="ephemeral",
        pin_ttl_s=30.0,
    )
    assert H.parse_header_hints({"x-dynamo-session-id": "s"}).prefix_id == "s"
    assert (
        H.parse_header_hints({"x-akr-prefix-id": "a", "x-dynamo-session-id": "b"}).prefix_id == "a"
    )
    assert H.parse_header_hints({"x-akr-cache-type": "ephemeral"}).pin_ttl_s == 300.0


@pytest.mark.parametrize(
    "name,value",
    [
        ("x-akr-total-requests", "0"),
        ("x-akr-total-requests", "1.0"),
        ("x-akr-iat", "fast"),
        ("x-akr-osl", "-1"),
        ("x-akr-latency-sensitivity", "nan"),
        ("x-akr-latency-sensitivity", "-1"),
        ("x-akr-priority", "1e3"),
        ("x-akr-cache-ttl", "never"),
        ("x-akr-cache-type", "forever"),
        ("x-akr-prefix-id", "a b"),
        ("x-dynamo-session-id", "x" * 300),
    ],
)
def test_header_hints_reject(name: str, value: str) -> None:
    with pytest.raises(HintError) as ei:
        H.parse_header_hints({name: value})
    assert ei.value.field == f"header:{name}"


def test_precedence_body_over_headers_per_field() -> None:
    h = H.parse_hints(
        {"prefix_id": "body", "iat": 10},
        None,
        {
            "x-akr-prefix-id": "hdr",
            "x-akr-total-requests": "7",
            "x-akr-cache-ttl": "1m",
            "x-dynamo-session-id": "sess",
        },
    )
    assert (h.prefix_id, h.iat_ms, h.total_requests, h.pin_ttl_s) == ("body", 10, 7, 60.0)
    h = H.parse_hints(None, {"type": "ephemeral", "ttl": "3s"}, {"x-akr-cache-ttl": "1h"})
    assert h.pin_ttl_s == 3.0
    # A bad header is an error even when the body would win.
    with pytest.raises(HintError):
        H.parse_hints({"total_requests": 3}, None, {"x-akr-total-requests": "zero"})
    # ... or when another header wins.
    with pytest.raises(HintError) as ei:
        H.parse_header_hints({"x-akr-prefix-id": "hdr", "x-dynamo-session-id": "a b"})
    assert ei.value.field == "header:x-dynamo-session-id"


def test_annotation_encoding_exact() -> None:
    h = H.parse_agent_hints(NAT_BODY["agent_hints"], NAT_BODY["cache_control"])
    assert H.encode_annotations(h) == [
        "akr.v1.prefix_id=sess-123",
        "akr.v1.total_requests=10",
        "akr.v1.iat_ms=250",
        "akr.v1.osl=512",
        "akr.v1.priority=2",
        "akr.v1.latency_sensitivity=2.0",
        "akr.v1.pin=ephemeral:3.0",
    ]
    assert H.encode_annotations(AgentHints()) == []
    assert H.decode_annotations(H.encode_annotations(h)) == h


def test_decode_ignores_junk() -> None:
    anns = [
        "foo",
        "akr.v2.total_requests=3",
        "akr.v1.total_requests=0",
        "akr.v1.nope=1",
        "akr.v1.iat_ms",
        "akr.v1.pin=forever:3",
        "akr.v1.pin=ephemeral:inf",
        "akr.v1.latency_sensitivity=nan",
        "akr.v1.prefix_id=a=b",
        "akr.v1.osl=12",
        "akr.v1.osl=oops",
    ]
    assert H.decode_annotations(anns) == AgentHints(prefix_id="a=b", osl=12)
    for junk in (None, 3, "akr.v1.osl=5", {"a": 1}, [None, 1, b"akr.v1.osl=5"]):
        assert H.decode_annotations(junk) == AgentHints()


def test_hints_from_request() -> None:
    req = {
        "annotations": ["akr.v1.total_requests=5"],
        "agent_context": {"session_id": "s1"},
        "routing": {"expected_output_tokens": 64, "priority": 1},
    }
    assert H.hints_from_request(req) == AgentHints(
        prefix_id="s1", total_requests=5, osl=64, priority=1
    )
    assert (
        H.hints_from_request(
            {"annotations": ["akr.v1.osl=9"], "routing": {"expected_output_tokens": 64}}
        ).osl
        == 9
    )
    for junk in (None, [], {"routing": 5, "agent_context": "x", "annotations": {}}):
        assert H.hints_from_request(junk) == AgentHints()


_hints = st.builds(
    AgentHints,
    prefix_id=st.none() | st.from_regex(r"[A-Za-z0-9._:@/+=\-]{1,256}", fullmatch=True),
    total_requests=st.none() | st.integers(1, H.MAX_TOTAL_REQUESTS),
    osl=st.none() | st.integers(1, H.MAX_OSL),
    iat_ms=st.none() | st.integers(1, H.MAX_IAT_MS),
    latency_sensitivity=st.none() | st.floats(0, 1e300, allow_nan=False),
    priority=st.none() | st.integers(H.INT32_MIN, H.INT32_MAX),
    pin_type=st.none(),
    pin_ttl_s=st.none(),
)


@settings(max_examples=300, deadline=None)
@given(_hints, st.none() | st.floats(1e-3, H.MAX_PIN_TTL_S, allow_nan=False))
def test_roundtrip_property(h: AgentHints, ttl: float | None) -> None:
    if ttl is not None:
        h = H.merge(AgentHints(pin_type="ephemeral", pin_ttl_s=ttl), h)
    assert H.decode_annotations(H.encode_annotations(h)) == h


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(), st.text().map(lambda s: "akr.v1." + s), st.integers(), st.none(), st.floats()
        )
    )
)
def test_decode_is_total(anns: list) -> None:
    h = H.decode_annotations(anns)
    assert isinstance(h, AgentHints)
    if h.latency_sensitivity is not None:
        assert math.isfinite(h.latency_sensitivity)


def test_request_id_annotation_round_trip_and_rule() -> None:
    """Read back exactly what the gateway writes; a value outside the rule (1..128 characters
    of the prefix-id set) is no id, and the annotation is not a hint."""
    anns = ["mine", H.request_id_annotation("rq-1"), "akr.v1.osl=9"]
    assert H.annotated_request_id(anns) == "rq-1"
    assert H.decode_annotations(anns) == AgentHints(osl=9)
    for junk in (None, {}, [], ["akr.v1.request_id="], ["akr.v1.request_id=a b"], [7]):
        assert H.annotated_request_id(junk) is None
    assert H.annotated_request_id([H.request_id_annotation("x" * 129)]) is None
    assert H.valid_request_id("x" * 128) and not H.valid_request_id("x" * 129)
    assert not H.valid_request_id("") and not H.valid_request_id("a\r\nb")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(), st.text().map(lambda s: "akr.v1.request_id=" + s))))
def test_annotated_request_id_is_total(anns: list) -> None:
    rid = H.annotated_request_id(anns)
    assert rid is None or H.valid_request_id(rid)
