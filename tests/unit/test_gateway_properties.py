"""Property tests: hostile bodies and headers against the gateway (stand-in echo upstream).

Properties: every answer is a 2xx pass-through or a clear 4xx in OpenAI's error shape, never a
5xx or a dropped connection; what passes never carries unknown hint keys, cache_control, forged
``akr.`` annotations or worker-pinning headers; and a valid request sent concurrently with hostile
ones gets exactly its own answer.
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from frontend.translate import (
    STOCK_AGENT_HINT_KEYS,
    WORKER_PIN_HEADERS,
    WORKER_PIN_NVEXT_KEYS,
    translate,
    upstream_body,
)
from router import hints as H
from tests.unit.test_gateway import EchoUpstream, make_client

CHAT = "/v1/chat/completions"
HINT_KEYS = [
    "prefix_id",
    "total_requests",
    "osl",
    "iat",
    "latency_sensitivity",
    "priority",
    "strict_priority",
    "speculative_prefill",
    "foo",
]
PROP = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_scalar = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-10, 10**7)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "LOW",
            "MEDIUM",
            "HIGH",
            "ephemeral",
            "30s",
            "5m",
            "1h",
            "250ms",
            "0s",
            "akr.v1.total_requests=5",
        ]
    )
)
json_value = st.recursive(
    json_scalar,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)
valid_hint = {
    "prefix_id": st.from_regex(r"[A-Za-z0-9._:@/+=\-]{1,40}", fullmatch=True),
    "total_requests": st.integers(1, 100),
    "osl": st.integers(1, 4096) | st.sampled_from(["LOW", "MEDIUM", "HIGH"]),
    "iat": st.integers(1, 10_000) | st.sampled_from(["LOW", "MEDIUM", "HIGH"]),
    "latency_sensitivity": st.floats(0, 10),
    "priority": st.integers(-5, 5),
}
agent_hints = st.dictionaries(
    st.sampled_from(HINT_KEYS),
    json_value,
    max_size=6,
) | st.fixed_dictionaries({}, optional={k: v | json_scalar for k, v in valid_hint.items()})
cache_control = json_value | st.fixed_dictionaries(
    {"type": st.sampled_from(["ephemeral", "persistent"]) | json_scalar},
    optional={"ttl": st.sampled_from(["3s", "5m", "1h", "250ms", "0s", "25h", "x"]) | json_scalar},
)
annotations = json_value | st.lists(
    st.text(max_size=12) | st.text(max_size=12).map(lambda s: "akr.v1." + s), max_size=4
)
nvext = json_value | st.fixed_dictionaries(
    {},
    optional={
        "agent_hints": agent_hints,
        "cache_control": cache_control,
        "annotations": annotations,
        "ignore_eos": st.booleans(),
        "backend_instance_id": json_scalar,
    },
)
header_value = st.text(alphabet=string.ascii_letters + string.digits + " .:-_=/+@,;!*", max_size=30)
header_names = [
    *H.HINT_HEADERS,
    H.SESSION_HEADER,
    "x-dynamo-parent-session-id",
    *WORKER_PIN_HEADERS,
    "cookie",
    "x-request-id",
    "content-type",
]
headers = st.dictionaries(
    st.sampled_from(header_names),
    header_value | st.sampled_from(["1", "0", "LOW", "5m", "ephemeral", "sess-1", "-1", "1e9"]),
    max_size=5,
)


@st.composite
def hostile_body(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return json.dumps(draw(json_value)).encode()
    body: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "x"}],
        "nvext": draw(nvext),
    }
    if draw(st.booleans()):
        body["stream"] = True
    extra = draw(st.dictionaries(st.text(max_size=6), json_value, max_size=2))
    body = {**extra, **body}
    return json.dumps(body).encode()


@dataclass
class Env:
    loop: asyncio.Runner
    upstream: EchoUpstream
    gateway: Any  # FastClient or aiohttp TestClient
    session: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return str(self.gateway.make_url(path))

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    runner = asyncio.Runner()

    async def setup() -> Env:
        up = EchoUpstream()
        up.server = TestServer(up.app())
        await up.server.start_server()
        gw = await make_client(up.url, max_body_bytes=64 * 1024)
        return Env(runner, up, gw, aiohttp.ClientSession())

    e = runner.run(setup())
    yield e

    async def teardown() -> None:
        await e.session.close()
        await e.gateway.close()
        assert e.upstream.server is not None
        await e.upstream.server.close()

    runner.run(teardown())
    runner.close()


async def _send(e: Env, raw: bytes, hdrs: dict[str, str]) -> tuple[int, bytes, str]:
    async with e.session.post(
        e.url(CHAT), data=raw, headers={"Content-Type": "application/json", **hdrs}
    ) as r:
        return r.status, await r.read(), r.headers.get("Content-Type", "")


def _check_answer(status: int, payload: bytes, ctype: str) -> None:
    assert status < 500, payload[:300]
    if status >= 400:
        assert status in (400, 404, 413, 422), status
        err = json.loads(payload)["error"]
        assert isinstance(err["message"], str) and err["message"]
        assert err["type"] == "invalid_request_error"
        assert err["param"] is None or isinstance(err["param"], str)
    else:
        assert status == 200


def _check_forwarded(rec: dict[str, Any]) -> None:
    """What reached the upstream is in the stock frontend's vocabulary only."""
    nvext = rec["body"].get("nvext")
    hdrs = rec["headers"]
    for name in WORKER_PIN_HEADERS:
        assert name not in hdrs
    assert "cookie" not in hdrs
    if isinstance(nvext, dict):
        assert "cache_control" not in nvext
        assert not set(nvext) & set(WORKER_PIN_NVEXT_KEYS)
        ah = nvext.get("agent_hints")
        if ah is not None:
            assert set(ah) <= set(STOCK_AGENT_HINT_KEYS)
            if "osl" in ah:
                assert isinstance(ah["osl"], int)
        anns = nvext.get("annotations") or []
        own = [a for a in anns if a.startswith("akr.")]
        assert all(a.startswith(H.ANNOTATION_PREFIX) for a in own)
        h = H.decode_annotations(anns)
        rid = hdrs[H.REQUEST_ID_HEADER]
        assert H.valid_request_id(rid) and H.annotated_request_id(anns) == rid
        assert own == [*H.encode_annotations(h), H.request_id_annotation(rid)], (
            "annotations are exactly the gateway's encoding"
        )
        assert hdrs.get(H.SESSION_HEADER) == h.prefix_id


@PROP
@given(raw=hostile_body(), hdrs=headers)
def test_hostile_requests_get_clear_answers(env: Env, raw: bytes, hdrs: dict[str, str]) -> None:
    before = len(env.upstream.seen)
    status, payload, ctype = env.run(_send(env, raw, hdrs))
    event(f"status {status}")
    _check_answer(status, payload, ctype)
    if status == 200:
        assert len(env.upstream.seen) == before + 1
        _check_forwarded(env.upstream.seen[-1])
    elif status != 422:  # 422 would be the upstream's own answer; the stand-in never sends it
        assert len(env.upstream.seen) == before, "a rejected request must not reach upstream"


async def _valid_between_hostile(
    e: Env, tag: str, stream: bool, hostile: list[tuple[bytes, dict[str, str]]]
) -> None:
    body = {
        "model": "tiny",
        "messages": [],
        "tag": tag,
        "stream": stream,
        "nvext": {
            "agent_hints": {"prefix_id": tag, "total_requests": 3, "iat": 100},
            "cache_control": {"type": "ephemeral", "ttl": "5s"},
        },
    }
    valid = _send(e, json.dumps(body).encode(), {})
    results = await asyncio.gather(valid, *(_send(e, r, h) for r, h in hostile))
    for status, payload, ctype in results[1:]:
        _check_answer(status, payload, ctype)
    status, payload, ctype = results[0]
    assert status == 200, payload
    if stream:
        text = payload.decode()
        assert text.count(f"{tag}#") == 3 and text.endswith("data: [DONE]\n\n")
    else:
        rec = json.loads(payload)["echo"]
        assert rec["body"]["tag"] == tag
        assert rec["headers"][H.SESSION_HEADER] == tag
        assert f"akr.v1.prefix_id={tag}" in rec["body"]["nvext"]["annotations"]
        assert "akr.v1.pin=ephemeral:5.0" in rec["body"]["nvext"]["annotations"]
        _check_forwarded(rec)


@PROP
@given(
    tag=st.from_regex(r"t-[a-z0-9]{8}", fullmatch=True),
    stream=st.booleans(),
    hostile=st.lists(st.tuples(hostile_body(), headers), min_size=1, max_size=4),
)
def test_valid_request_between_hostile_ones_gets_its_own_answer(
    env: Env, tag: str, stream: bool, hostile: list[tuple[bytes, dict[str, str]]]
) -> None:
    env.run(_valid_between_hostile(env, tag, stream, hostile))


def test_gateway_still_healthy(env: Env) -> None:
    async def check() -> int:
        async with env.session.get(env.url("/health")) as r:
            return r.status

    assert env.run(check()) == 200


@settings(max_examples=400, deadline=None)
@given(body=st.dictionaries(st.text(max_size=6), json_value, max_size=3), nv=nvext, hdrs=headers)
def test_translate_raises_only_hint_errors(body: dict, nv: object, hdrs: dict) -> None:
    body = {**body, "nvext": nv}
    try:
        tr = translate(body, {k.lower(): v for k, v in hdrs.items()}, "rid-1")
    except H.HintError as e:
        assert e.field and e.reason
        return
    assert set(tr.headers) >= {"Content-Type"}
    if tr.changed:
        _check_forwarded(
            {"body": tr.body, "headers": {k.lower(): v for k, v in tr.headers.items()}}
        )


@settings(max_examples=300, deadline=None)
@given(
    body=st.dictionaries(st.text(max_size=6).filter(lambda k: k != "nvext"), json_value),
    pad=st.sampled_from(["", " ", "\n\t \r"]),
    indent=st.sampled_from([None, 1]),
)
def test_a_body_without_nvext_goes_as_it_came_behind_the_request_id(
    body: dict, pad: str, indent: int | None
) -> None:
    """Not re-encoded: the client's bytes after its "{", the request id's annotation before
    them, and the whole the same JSON object plus that annotation (``{}`` included)."""
    raw = (pad + json.dumps(body, indent=indent) + pad).encode()
    tr = translate(body, {}, "rid-1")
    assert not tr.changed
    sent = upstream_body(tr, raw)
    assert json.loads(sent) == {**body, "nvext": {"annotations": ["akr.v1.request_id=rid-1"]}}
    assert sent.endswith(raw.lstrip()[1:])
