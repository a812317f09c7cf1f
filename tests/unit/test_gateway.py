"""Gateway behaviour against a stand-in OpenAI-compatible upstream that echoes what it got."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from frontend.config import GatewayConfig
from frontend.server import start_server, stop_server

CHAT = "/v1/chat/completions"
NAT_NVEXT = {
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


@dataclass
class EchoUpstream:
    """Echoes body and headers; streams SSE when asked; can stall or record cancellations."""

    server: TestServer | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    stall_s: float = 0.0

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "tiny"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        rec = {
            "body": body,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "path": request.path,
            "raw": raw.decode(),
        }
        self.seen.append(rec)
        if body.get("bad_status"):
            return web.json_response({"error": {"message": "nope"}}, status=body["bad_status"])
        if body.get("stock_error"):  # the shape of Dynamo 1.6.1's frontend's own errors
            return web.json_response(
                {"message": body["stock_error"], "type": "Bad Request", "code": 400}, status=400
            )
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        # The stock frontend echoes the client's request id; so does this stand-in.
        echo = (
            {"x-request-id": request.headers["x-request-id"]}
            if "x-request-id" in request.headers
            else {}
        )
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **echo})
            await resp.prepare(request)
            n = int(body.get("n_chunks", 3))
            try:
                for i in range(n):
                    chunk = {"choices": [{"delta": {"content": f"{body.get('tag', '')}#{i}"}}]}
                    await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    if body.get("chunk_delay"):
                        await asyncio.sleep(body["chunk_delay"])
                await resp.write(b"data: [DONE]\n\n")
            except (asyncio.CancelledError, ConnectionResetError):
                self.cancelled.set()
                raise
            return resp
        return web.json_response({"echo": rec}, headers=echo)


@pytest.fixture
async def upstream() -> AsyncIterator[EchoUpstream]:
    up = EchoUpstream()
    up.server = TestServer(up.app())
    await up.server.start_server()
    yield up
    await up.server.close()


class FastClient:
    """The gateway's server (frontend.server) with a small client interface."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> FastClient:
        self.gw, self.server = await start_server(self.config)
        port = self.server.sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession()
        return self

    def make_url(self, path: str) -> URL:
        return URL(self.base + path)

    async def post(self, path: str, **kw: Any) -> aiohttp.ClientResponse:
        assert self.session is not None
        return await self.session.post(self.base + path, **kw)

    async def get(self, path: str, **kw: Any) -> aiohttp.ClientResponse:
        assert self.session is not None
        return await self.session.get(self.base + path, **kw)

    async def close(self) -> None:
        assert self.session is not None
        await self.session.close()
        await stop_server(self.gw, self.server)


async def make_client(upstream_url: str, **cfg: Any) -> FastClient:
    config = GatewayConfig(upstream_url=upstream_url, host="127.0.0.1", port=0, **cfg)
    return await FastClient(config).start()


@pytest.fixture
async def gw(upstream: EchoUpstream) -> AsyncIterator[FastClient]:
    client = await make_client(upstream.url)
    yield client
    await client.close()


async def test_health_and_models(gw: FastClient) -> None:
    r = await gw.get("/health")
    assert r.status == 200 and (await r.json())["status"] == "ready"
    r = await gw.get("/v1/models")
    assert r.status == 200 and (await r.json())["data"][0]["id"] == "tiny"


async def test_nat_body_is_translated(gw: FastClient, upstream: EchoUpstream) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "nvext": {
            **NAT_NVEXT,
            "annotations": ["mine", "akr.v1.total_requests=999"],
            "ignore_eos": True,
        },
    }
    r = await gw.post(
        CHAT,
        json=body,
        headers={
            "x-dynamo-worker-instance-id": "42",
            "x-worker-instance-id": "42",
            "x-request-id": "rq-1",
            "cookie": "a=b",
        },
    )
    assert r.status == 200
    assert r.headers["x-request-id"] == "rq-1"  # the upstream's echo comes back
    got = (await r.json())["echo"]
    nvext = got["body"]["nvext"]
    assert nvext["agent_hints"] == {"priority": 2, "osl": 512, "latency_sensitivity": 2.0}
    assert "cache_control" not in nvext
    assert nvext["ignore_eos"] is True
    assert nvext["annotations"] == [
        "mine",
        "akr.v1.prefix_id=sess-123",
        "akr.v1.total_requests=10",
        "akr.v1.iat_ms=250",
        "akr.v1.osl=512",
        "akr.v1.priority=2",
        "akr.v1.latency_sensitivity=2.0",
        "akr.v1.pin=ephemeral:3.0",
        "akr.v1.request_id=rq-1",
    ]
    h = got["headers"]
    assert h["x-dynamo-session-id"] == "sess-123"
    assert h["x-request-id"] == "rq-1"
    assert "x-dynamo-worker-instance-id" not in h and "x-worker-instance-id" not in h
    assert "cookie" not in h
    assert got["body"]["messages"] == body["messages"]


async def test_worker_pins_in_the_body_are_dropped(gw: FastClient, upstream: EchoUpstream) -> None:
    """The body twins of the worker-pinning headers: the stock frontend honours
    ``nvext.backend_instance_id`` (and ``decode_worker_id``, ``dp_rank`` ...) to pick one of
    the processors, which a client learns from ``extra_fields: ["worker_id"]``."""
    pins = {"backend_instance_id": 7, "decode_worker_id": 7, "prefill_worker_id": 7}
    pins |= {"dp_rank": 0, "prefill_dp_rank": 0}
    nvext = {**pins, "extra_fields": ["worker_id"], "ignore_eos": True}
    r = await gw.post(CHAT, json={"model": "tiny", "messages": [], "nvext": nvext})
    assert r.status == 200
    assert (await r.json())["echo"]["body"]["nvext"] == {
        "extra_fields": ["worker_id"],
        "ignore_eos": True,
        "annotations": [f"akr.v1.request_id={r.headers['x-request-id']}"],
    }


async def test_plain_body_keeps_its_bytes(gw: FastClient, upstream: EchoUpstream) -> None:
    """A body without hints is not re-encoded: the client's bytes, the request id's annotation
    put in front."""
    raw = b'{"model":"tiny",  "messages":[], "max_tokens": 1}'
    r = await gw.post(CHAT, data=raw, headers={"Content-Type": "application/json"})
    assert r.status == 200
    rid = r.headers["x-request-id"]
    head = '{"nvext":{"annotations":["akr.v1.request_id=' + rid + '"]},'
    assert upstream.seen[-1]["raw"] == head + raw.decode()[1:]
    assert "x-dynamo-session-id" not in upstream.seen[-1]["headers"]
    raw = b'{"model":"tiny", "nvext": {"ignore_eos": true}}'
    r = await gw.post(CHAT, data=raw, headers={"Content-Type": "application/json"})
    annotations = [f"akr.v1.request_id={r.headers['x-request-id']}"]
    assert upstream.seen[-1]["body"] == {
        "model": "tiny",
        "nvext": {"ignore_eos": True, "annotations": annotations},
    }


async def test_header_hints(gw: FastClient, upstream: EchoUpstream) -> None:
    r = await gw.post(
        "/v1/completions",
        json={"model": "tiny", "prompt": "x"},
        headers={
            "x-akr-prefix-id": "h1",
            "x-akr-total-requests": "3",
            "x-akr-osl": "LOW",
            "x-akr-cache-ttl": "5m",
        },
    )
    assert r.status == 200
    got = upstream.seen[-1]
    assert got["path"] == "/v1/completions"
    assert got["headers"]["x-dynamo-session-id"] == "h1"
    assert got["body"]["nvext"]["agent_hints"] == {"osl": 128}
    assert "akr.v1.pin=ephemeral:300.0" in got["body"]["nvext"]["annotations"]


async def test_streaming_passthrough(gw: FastClient) -> None:
    r = await gw.post(
        CHAT,
        json={"model": "tiny", "stream": True, "tag": "s", "nvext": NAT_NVEXT},
        headers={"x-request-id": "rq-s"},
    )
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["x-request-id"] == "rq-s"
    text = (await r.read()).decode()
    assert text.count("data: ") == 4 and text.endswith("data: [DONE]\n\n")
    assert "s#2" in text


@pytest.mark.parametrize(
    "body,param",
    [
        ({"nvext": {"agent_hints": {"total_requests": 0}}}, "nvext.agent_hints.total_requests"),
        ({"nvext": {"agent_hints": {"prefix_id": "a b"}}}, "nvext.agent_hints.prefix_id"),
        ({"nvext": {"cache_control": {"type": "forever"}}}, "nvext.cache_control.type"),
        ({"nvext": {"cache_control": {"type": ["ephemeral"]}}}, "nvext.cache_control.type"),
        (
            {"nvext": {"cache_control": {"type": "ephemeral", "ttl": "soon"}}},
            "nvext.cache_control.ttl",
        ),
        ({"nvext": []}, "nvext"),
        ({"nvext": {"annotations": "x"}}, "nvext.annotations"),
    ],
)
async def test_invalid_hint_400(
    gw: FastClient, upstream: EchoUpstream, body: dict, param: str
) -> None:
    r = await gw.post(CHAT, json={"model": "tiny", **body})
    assert r.status == 400
    err = (await r.json())["error"]
    assert err["param"] == param and err["code"] == "invalid_hint"
    assert err["type"] == "invalid_request_error" and param in err["message"]
    assert upstream.seen == []


async def test_invalid_header_hint_400(gw: FastClient) -> None:
    r = await gw.post(CHAT, json={"model": "tiny"}, headers={"x-akr-iat": "-1"})
    assert r.status == 400
    assert (await r.json())["error"]["param"] == "header:x-akr-iat"


@pytest.mark.parametrize("raw", [b"{", b"[]", b"3", b"", b"\xff\xfe", b'{"a":1e999}'])
async def test_invalid_json_400(gw: FastClient, raw: bytes) -> None:
    r = await gw.post(CHAT, data=raw, headers={"Content-Type": "application/json"})
    assert r.status == 400
    err = (await r.json())["error"]
    assert err["param"] == "body" and err["code"] == "invalid_json"


@pytest.mark.parametrize("model", [["tiny"], {"a": 1}, 3, True])
async def test_a_model_that_is_not_a_string_400(
    gw: FastClient, upstream: EchoUpstream, model: object
) -> None:
    r = await gw.post(CHAT, json={"model": model, "messages": []})
    assert r.status == 400
    err = (await r.json())["error"]
    assert err["param"] == "model" and "string" in err["message"]
    assert upstream.seen == []


async def test_a_fault_of_the_gateway_is_a_counted_500(
    gw: FastClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gw.gw, "_proxy_post", broken)
    r = await gw.post(CHAT, json={"model": "tiny", "messages": []})
    assert r.status == 500 and (await r.json())["error"]["code"] == "internal_error"
    metrics = await (await gw.get("/metrics")).text()
    assert 'akr_gateway_requests_total{route="/v1/chat/completions",status="500"} 1.0' in metrics


async def test_body_too_large_413(upstream: EchoUpstream) -> None:
    client = await make_client(upstream.url, max_body_bytes=2048)
    try:
        r = await client.post(CHAT, data=b"{" + b" " * 4096 + b"}")
        assert r.status == 413 and (await r.json())["error"]["param"] == "body"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked upload
            for _ in range(10):
                yield b" " * 1024

        r = await client.post(CHAT, data=chunks())
        assert r.status == 413
    finally:
        await client.close()


async def test_upstream_status_passes_through(gw: FastClient) -> None:
    r = await gw.post(CHAT, json={"model": "tiny", "bad_status": 422})
    assert r.status == 422 and (await r.json())["error"]["message"] == "nope"


async def test_the_stock_frontends_own_error_reaches_the_client_in_openai_shape(
    gw: FastClient,
) -> None:
    """Dynamo's frontend answers its own 400s as {"message", "type", "code"}: OpenAI clients
    look for an "error" object and found none; the message is kept, wrapped."""
    message = "Failed to deserialize the JSON body: unknown field `allowed_worker_ids`"
    r = await gw.post(CHAT, json={"model": "tiny", "stock_error": message})
    assert r.status == 400
    assert (await r.json())["error"] == {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": "rejected_by_frontend",
    }


async def test_upstream_down_502() -> None:
    client = await make_client("http://127.0.0.1:9")  # discard port: nothing listens
    try:
        r = await client.post(CHAT, json={"model": "tiny"})
        assert r.status == 502 and (await r.json())["error"]["code"] == "upstream_unavailable"
        r = await client.get("/v1/models")
        assert r.status == 502
    finally:
        await client.close()


async def test_upstream_timeout_504(upstream: EchoUpstream) -> None:
    upstream.stall_s = 2.0
    client = await make_client(upstream.url, upstream_read_timeout_s=0.2)
    try:
        r = await client.post(CHAT, json={"model": "tiny"})
        assert r.status == 504 and (await r.json())["error"]["code"] == "upstream_timeout"
    finally:
        await client.close()


async def test_client_disconnect_cancels_upstream(gw: FastClient, upstream: EchoUpstream) -> None:
    url = gw.make_url(CHAT)
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            url, json={"model": "tiny", "stream": True, "n_chunks": 1000, "chunk_delay": 0.01}
        )
        await resp.content.readline()  # first chunk arrived: the stream is flowing
        resp.close()  # drop the connection mid-stream
    await asyncio.wait_for(upstream.cancelled.wait(), timeout=5)


async def test_metrics(gw: FastClient) -> None:
    await gw.post(CHAT, json={"model": "tiny", "nvext": NAT_NVEXT})
    await gw.post(CHAT, json={"model": "tiny", "nvext": {"agent_hints": {"iat": 0}}})
    text = await (await gw.get("/metrics")).text()
    assert 'akr_gateway_requests_total{route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'akr_gateway_hints_total{field="prefix_id"} 1.0' in text
    assert 'akr_gateway_rejects_total{field="nvext.agent_hints.iat"} 1.0' in text
    assert "akr_gateway_upstream_latency_seconds_bucket" in text


async def test_trace_written(upstream: EchoUpstream, tmp_path) -> None:
    path = tmp_path / "gw.jsonl"
    client = await make_client(upstream.url, trace_path=path)
    await client.post(CHAT, json={"model": "tiny", "nvext": NAT_NVEXT})
    await client.post(CHAT, json={"model": "tiny", "nvext": {"agent_hints": {"iat": 0}}})
    await client.close()  # flushes the writer
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert recs[0]["status"] == 200 and recs[0]["hints"]["prefix_id"] == "sess-123"
    assert recs[0]["hints"]["pin_ttl_s"] == 3.0
    assert recs[1] == {**recs[1], "status": 400, "reject": "nvext.agent_hints.iat"}
    described = GatewayConfig.model_fields["trace_path"].description or ""
    for key in {k for rec in recs for k in rec}:  # where users look: docs/CONFIG.md
        assert re.search(rf"\b{key}\b", described), key


UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (None, False),
        ("rq-7f3a", True),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
        ("a" * 128, True),
        ("a" * 129, False),  # too long
        ("two words", False),  # a space; also what two x-request-id fields join into
        ('q"uote', False),
        ("", False),
    ],
)
async def test_the_request_id_is_the_clients_or_a_new_one_everywhere(
    upstream: EchoUpstream, tmp_path, sent: str | None, kept: bool
) -> None:
    """The answer's x-request-id, what the stock frontend is sent (header and annotation, the
    processor's trace reads the annotation) and the gateway's trace record name one id: the
    client's when it is 1..128 characters of the safe set, else a new UUID4."""
    path = tmp_path / "gw.jsonl"
    client = await make_client(upstream.url, trace_path=path)
    headers = {} if sent is None else {"x-request-id": sent}
    for stream in (False, True):
        r = await client.post(CHAT, json={"model": "tiny", "stream": stream}, headers=headers)
        await r.read()
        assert r.status == 200
        rid = r.headers["x-request-id"]
        assert rid == sent if kept else UUID4.fullmatch(rid), rid
        got = upstream.seen[-1]
        assert got["headers"]["x-request-id"] == rid
        assert got["body"]["nvext"]["annotations"] == [f"akr.v1.request_id={rid}"]
    await client.close()  # flushes the writer
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [r["request_id"] for r in recs]
    assert len(ids) == 2 and (ids[0] == ids[1] == sent if kept else ids[0] != ids[1])


async def test_refused_requests_carry_their_request_id(upstream: EchoUpstream, tmp_path) -> None:
    """A 400 and a 413 answer name the id in their header and their trace record as well."""
    path = tmp_path / "gw.jsonl"
    client = await make_client(upstream.url, trace_path=path, max_body_bytes=2048)
    bad_hint = {"model": "tiny", "nvext": {"agent_hints": {"iat": 0}}}
    r1 = await client.post(CHAT, json=bad_hint, headers={"x-request-id": "rq-400"})
    r2 = await client.post(CHAT, data=b"{" + b" " * 4096 + b"}")
    await client.close()
    assert (r1.status, r1.headers["x-request-id"]) == (400, "rq-400")
    assert r2.status == 413 and UUID4.fullmatch(r2.headers["x-request-id"])
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["status"], r["request_id"]) for r in recs] == [
        (400, "rq-400"),
        (413, r2.headers["x-request-id"]),
    ]
    assert not upstream.seen


async def test_a_body_over_the_limit_has_its_trace_record(upstream: EchoUpstream, tmp_path) -> None:
    """A 413 is a reject like the others (counted under field "body"): the trace, one line
    per completion request answered, has its record too."""
    path = tmp_path / "gw.jsonl"
    client = await make_client(upstream.url, trace_path=path, max_body_bytes=2048)
    r = await client.post(CHAT, data=b"{" + b" " * 4096 + b"}")
    assert r.status == 413
    await client.close()  # flushes the writer
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["route"], r["status"], r["reject"]) for r in recs] == [(CHAT, 413, "body")]


async def test_lost_trace_records_are_counted_by_reason(upstream: EchoUpstream, tmp_path) -> None:
    """An unwritable trace path loses every record; /metrics counts them, by reason."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    client = await make_client(upstream.url, trace_path=blocker / "gw.jsonl")  # ENOTDIR
    try:
        for _ in range(3):
            assert (await client.post(CHAT, json={"model": "tiny"})).status == 200
        line = 'akr_gateway_trace_records_dropped_total{reason="unwritable"} 3.0'
        for _ in range(100):  # the writer's task writes in the background
            text = await (await client.get("/metrics")).text()
            if line in text:
                break
            await asyncio.sleep(0.02)
        assert line in text
    finally:
        await client.close()


async def test_public_models_filter(upstream: EchoUpstream, monkeypatch) -> None:
    monkeypatch.setenv("AKR_GATEWAY_PUBLIC_MODELS", "tiny, other")
    assert GatewayConfig().public_models == ["tiny", "other"]
    client = await make_client(upstream.url, public_models=["other"])
    try:
        r = await client.get("/v1/models")
        assert (await r.json())["data"] == []
        r = await client.post(CHAT, json={"model": "tiny"})
        assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"
        r = await client.post(CHAT, json={"model": "other"})
        assert r.status == 200
    finally:
        await client.close()


def test_config_env(monkeypatch) -> None:
    monkeypatch.setenv("AKR_GATEWAY_PORT", "9123")
    monkeypatch.setenv("AKR_GATEWAY_UPSTREAM_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AKR_GATEWAY_STALL_TIMEOUT_S", "3.5")
    cfg = GatewayConfig()
    assert (cfg.port, cfg.upstream_url, cfg.stall_timeout_s) == (9123, "http://127.0.0.1:1", 3.5)
    assert cfg.host == "127.0.0.1" and cfg.trace_path is None
    for name, f in GatewayConfig.model_fields.items():
        assert f.description, name


async def test_duplicate_keys_cannot_smuggle_hints(gw: FastClient, upstream: EchoUpstream) -> None:
    raw = (
        b'{"model":"tiny","nvext":{"agent_hints":{"prefix_id":"x y","total_requests":0},'
        b'"cache_control":{"type":"forever"}},"nvext":{"ignore_eos":true}}'
    )
    r = await gw.post(CHAT, data=raw, headers={"Content-Type": "application/json"})
    assert r.status == 200
    annotations = [f"akr.v1.request_id={r.headers['x-request-id']}"]
    assert upstream.seen[-1]["body"] == {
        "model": "tiny",
        "nvext": {"ignore_eos": True, "annotations": annotations},
    }


def test_metrics_exposition() -> None:
    from prometheus_client import generate_latest

    from frontend.metrics import GatewayMetrics

    m = GatewayMetrics()
    for s in (0.0005, 0.003, 0.003, 1000.0):
        m.observe_upstream("/v1/completions", s)
    m.upstream_error("timeout")
    m.dropped_pin_headers += 2
    text = generate_latest(m.registry).decode()
    assert (
        'akr_gateway_upstream_latency_seconds_bucket{le="0.001",route="/v1/completions"} 1.0'
        in text
    )
    assert (
        'akr_gateway_upstream_latency_seconds_bucket{le="0.005",route="/v1/completions"} 3.0'
        in text
    )
    assert (
        'akr_gateway_upstream_latency_seconds_bucket{le="+Inf",route="/v1/completions"} 4.0' in text
    )
    assert 'akr_gateway_upstream_latency_seconds_count{route="/v1/completions"} 4.0' in text
    assert 'akr_gateway_upstream_errors_total{kind="timeout"} 1.0' in text
    assert "akr_gateway_dropped_pin_headers_total 2.0" in text
