"""The gateway under faults: readiness that follows the path behind it, prompt limits, 503 with
Retry-After for "retry later", a deadline on upstream slots, and clients that stop reading."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from frontend.config import GatewayConfig
from frontend.gateway import Gateway
from frontend.health import Verdict
from frontend.server import HttpProtocol, start_server, stop_server
from tests.unit.test_gateway import FastClient, make_client

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
# What Dynamo 1.6.1's stock frontend sends when the engine raised HttpError(503, ...) (checked
# with tests/integration/unavailable_worker.py): its text replaces the engine's message.
FRONTEND_503 = {"message": "Internal server error", "type": "Service Unavailable", "code": 503}
FRONTEND_503_EVENT = (
    b'data: {"error":{"message":"Service temporarily unavailable",'
    b'"type":"service_unavailable","code":503}}\n\ndata: [DONE]\n\n'
)


@dataclass
class Stub:
    """A stock frontend stand-in: a model list with context windows, answers chosen per test."""

    context_window: int = 1000
    models_status: int = 200
    model_probes: int = 0
    answer: str = "ok"  # ok | 503 | 500_marker | sse_503 | sse_503_late | endless | trickle | slow
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post(CHAT, self._post)
        app.router.add_post(COMPLETIONS, self._post)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        self.model_probes += 1
        data = [{"id": "tiny", "object": "model", "context_window": self.context_window}]
        return web.json_response({"object": "list", "data": data}, status=self.models_status)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if self.answer == "503":
            return web.json_response(FRONTEND_503, status=503)
        if self.answer == "500_marker":
            text = "akr_unavailable retry_after_s=7 reason=admission_full: queue full"
            return web.json_response({"message": text, "code": 500}, status=500)
        if self.answer == "slow":
            await asyncio.sleep(3.0)
            return web.json_response({"ok": True})
        if self.answer == "ok":
            return web.json_response({"ok": True})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        token = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
        try:
            if self.answer == "sse_503":
                await resp.write(FRONTEND_503_EVENT)
            elif self.answer == "sse_503_late":
                await resp.write(token + FRONTEND_503_EVENT)
            elif self.answer == "trickle":  # tokens at a model's pace, ~40 KB/s
                while True:
                    await resp.write(token * 4)
                    await asyncio.sleep(0.005)
            else:  # endless: a long answer, as fast as the client takes it
                piece = b"data: " + b"x" * 8000 + b"\n\n"
                while True:
                    await resp.write(piece)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled.set()
            raise
        return resp


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    s = Stub()
    s.server = TestServer(s.app())
    await s.server.start_server()
    yield s
    await s.server.close()


async def until(cond: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def ready_gateway(url: str, **cfg: Any) -> FastClient:
    """A gateway that has read the model list once (context windows known)."""
    gw = await make_client(url, public_models="tiny", **cfg)
    await until(lambda: gw.gw.readiness.contexts)
    return gw


# --- health ------------------------------------------------------------------------------------


@dataclass
class ProcessorHealth:
    """The processor's /health stand-in."""

    status: int = 200
    body: dict[str, Any] = field(
        default_factory=lambda: {"status": "ready", "routable_workers": 2, "expected_workers": 2}
    )
    hits: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response(self.body, status=self.status)


async def serve_processor_health() -> tuple[ProcessorHealth, TestServer]:
    """A processor's ``/health`` on a free port, its answer set through the returned object."""
    proc = ProcessorHealth()
    app = web.Application()
    app.router.add_get("/health", proc.handle)
    server = TestServer(app)
    await server.start_server()
    return proc, server


async def test_readiness_follows_the_frontend_and_the_processor(stub: Stub) -> None:
    proc, proc_server = await serve_processor_health()
    proc_url = str(proc_server.make_url("/health"))
    gw = await make_client(
        stub.url, public_models="tiny", processor_health_url=proc_url, ready_cache_s=0.3
    )
    try:
        await until(lambda: proc.hits)  # the model watch's first read (its next is 10 s on)
        before = proc.hits
        for path in ("/health", "/ready"):
            r = await gw.get(path)
            body = await r.json()
            assert r.status == 200 and body["status"] == "ready", body
            assert body["routable_workers"] == 2 and body["expected_workers"] == 2
        assert proc.hits == before + 1, "a second probe within ready_cache_s reuses the verdict"

        proc.body = {"status": "degraded", "routable_workers": 1, "expected_workers": 2}
        await asyncio.sleep(0.35)
        r = await gw.get("/health")
        assert r.status == 200 and (await r.json())["status"] == "degraded"

        # A stalled processor (its loop stuck) still reports its last count: not ready.
        proc.status = 503
        proc.body = {"status": "stalled", "routable_workers": 2, "expected_workers": 2}
        await asyncio.sleep(0.35)
        r = await gw.get("/ready")
        body = await r.json()
        assert r.status == 503 and body["reason"] == "stalled", body

        proc.body = {"status": "no_workers", "routable_workers": 0, "expected_workers": 2}
        await asyncio.sleep(0.35)
        r = await gw.get("/ready")
        body = await r.json()
        assert r.status == 503 and body["reason"] == "no_workers", body

        await proc_server.close()  # the processor is down
        await asyncio.sleep(0.35)
        r = await gw.get("/health")
        body = await r.json()
        assert r.status == 503 and body["reason"] == "processor_unreachable", body
        r = await gw.get("/live")
        assert r.status == 200 and (await r.json())["status"] == "live"
        metrics = await (await gw.get("/metrics")).text()
        assert "akr_gateway_ready 0.0" in metrics
    finally:
        await gw.close()
        await proc_server.close()


async def test_the_ready_gauge_follows_the_background_probe(
    stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing asking /ready (a single-node deployment has no readiness probe), the gauge
    the AkrGatewayNotReady alert reads still follows the path behind the gateway. Before, it
    kept the verdict of the last /ready ever asked, or stayed absent."""
    import frontend.gateway as gateway_module

    monkeypatch.setattr(gateway_module, "MODEL_REFRESH_S", 0.05)
    proc, proc_server = await serve_processor_health()
    gw = await make_client(
        stub.url,
        public_models="tiny",
        processor_health_url=str(proc_server.make_url("/health")),
        context_tokens=1000,  # a fixed prompt limit: the model list is not needed for it
    )

    async def gauge() -> str:
        text = await (await gw.get("/metrics")).text()
        return next((x for x in text.splitlines() if x.startswith("akr_gateway_ready ")), "")

    try:
        for _ in range(250):
            if await gauge() == "akr_gateway_ready 1.0":
                break
            await asyncio.sleep(0.02)
        assert await gauge() == "akr_gateway_ready 1.0"
        proc.status = 503
        proc.body = {"status": "no_workers", "routable_workers": 0, "expected_workers": 2}
        for _ in range(250):
            if await gauge() == "akr_gateway_ready 0.0":
                break
            await asyncio.sleep(0.02)
        assert await gauge() == "akr_gateway_ready 0.0"
    finally:
        await gw.close()
        await proc_server.close()


async def test_readiness_needs_the_model_listed(stub: Stub) -> None:
    gw = await make_client(stub.url, public_models="other", ready_cache_s=0)
    try:
        r = await gw.get("/health")
        body = await r.json()
        assert r.status == 503 and body["reason"] == "model_not_listed"
        assert body["missing"] == ["other"]
        stub.models_status = 500
        r = await gw.get("/ready")
        assert r.status == 503 and (await r.json())["reason"] == "frontend_unhealthy"
    finally:
        await gw.close()
    gw = await make_client("http://127.0.0.1:9", ready_cache_s=0)  # nothing listens
    try:
        r = await gw.get("/health")
        assert r.status == 503 and (await r.json())["reason"] == "frontend_unreachable"
        assert (await gw.get("/live")).status == 200
    finally:
        await gw.close()


# --- prompt limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "route,body,param",
    [
        (CHAT, {"messages": [{"role": "user", "content": "a" * 8001}]}, "messages"),
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "é" * 4001}]}]},
            "messages",
        ),
        (COMPLETIONS, {"prompt": "a" * 8001}, "prompt"),
        (COMPLETIONS, {"prompt": ["ok", "a" * 8001]}, "prompt"),
        (COMPLETIONS, {"prompt": list(range(1001))}, "prompt"),
        (COMPLETIONS, {"prompt": [[1, 2], list(range(1001))]}, "prompt"),
    ],
)
async def test_prompt_over_the_context_gets_400(
    stub: Stub, route: str, body: dict[str, Any], param: str
) -> None:
    gw = await ready_gateway(stub.url)  # context_window 1000, 8 bytes per token: 8000 bytes
    try:
        r = await gw.post(route, json={"model": "tiny", **body})
        err = (await r.json())["error"]
        assert r.status == 400, err
        assert err["param"] == param and err["code"] == "context_length_exceeded"
        assert err["message"].startswith(f"{param}: ") and "1000 tokens" in err["message"]
    finally:
        await gw.close()


async def test_prompt_within_the_bound_passes_and_the_setting_overrides(stub: Stub) -> None:
    gw = await ready_gateway(stub.url)
    try:
        ok = {"model": "tiny", "messages": [{"role": "user", "content": "a" * 7000}]}
        assert (await gw.post(CHAT, json=ok)).status == 200
        ids = {"model": "tiny", "prompt": list(range(1000))}
        assert (await gw.post(COMPLETIONS, json=ids)).status == 200
    finally:
        await gw.close()
    gw = await make_client(stub.url, context_tokens=100)
    try:
        r = await gw.post(CHAT, json=ok)
        assert r.status == 400 and "100 tokens" in (await r.json())["error"]["message"]
    finally:
        await gw.close()


def test_prompt_rule_counts_utf8_bytes_and_stops_early() -> None:
    from frontend.prompt_limit import prompt_error

    assert prompt_error("messages", {"messages": [{"content": "é" * 50}]}, 10, 10.0) is None
    assert "101 bytes" in (prompt_error("messages", {"messages": ["é" * 50, "a"]}, 10, 10.0) or "")
    assert prompt_error("prompt", {"prompt": []}, 10, 1.0) is None
    assert prompt_error("messages", {}, 10, 1.0) is None
    deep: Any = "a" * 20
    for _ in range(200):
        deep = [deep]
    assert prompt_error("messages", {"messages": deep}, 10, 1.0) is None  # too deep: not text


async def test_body_limit_follows_the_context(stub: Stub) -> None:
    assert GatewayConfig().body_limit() == 131072 * 8 * 3 + 1024 * 1024
    assert GatewayConfig(max_body_bytes=5000).body_limit(10) == 5000
    gw = await ready_gateway(stub.url)  # 1000 tokens -> 24000 + 1 MiB
    try:
        assert gw.gw.body_limit() == 1000 * 8 * 3 + 1024 * 1024
        big = {"model": "tiny", "messages": [], "pad": "x" * (1024 * 1024 + 30_000)}
        r = await gw.post(CHAT, json=big)
        assert r.status == 413 and (await r.json())["error"]["param"] == "body"
    finally:
        await gw.close()


# --- 503 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_503_becomes_503_with_retry_after(stub: Stub, stream: bool) -> None:
    stub.answer = "sse_503" if stream else "503"
    gw = await ready_gateway(stub.url, retry_after_s=3)
    try:
        r = await gw.post(CHAT, json={"model": "tiny", "messages": [], "stream": stream})
        assert r.status == 503 and r.headers["Retry-After"] == "3"
        err = (await r.json())["error"]
        assert err["type"] == "service_unavailable" and err["code"] == "unavailable"
        metrics = await (await gw.get("/metrics")).text()
        assert 'akr_gateway_unavailable_total{reason="unavailable"} 1.0' in metrics
    finally:
        await gw.close()


@pytest.mark.parametrize(
    ("health", "reason"),
    [
        ("ready", "unavailable"),  # an admission refusal: no state of the processor says so
        ("no_workers", "no_worker"),
        ("no_router", "no_router"),
        ("router_timeout", "router_timeout"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_the_processors_health_names_the_503s_reason(
    stub: Stub, health: str, reason: str, stream: bool
) -> None:
    """The stock frontend drops the processor's text (docs/DESIGN.md "Retry-later answers"):
    its state, read fresh from its /health, gives the reason instead. Before, a health read
    up to 10 s earlier, and only no_workers."""
    proc, proc_server = await serve_processor_health()
    gw = await ready_gateway(
        stub.url,
        processor_health_url=str(proc_server.make_url("/health")),
        ready_cache_s=0.3,
        retry_after_s=3,
    )
    try:
        await until(lambda: proc.hits)  # the model watch read it once, as "ready"
        proc.status = 200 if health == "ready" else 503
        proc.body = {"status": health, "routable_workers": 0, "expected_workers": 1}
        await asyncio.sleep(0.35)  # past the readiness cache, not the 10 s model watch
        stub.answer = "sse_503" if stream else "503"
        r = await gw.post(CHAT, json={"model": "tiny", "messages": [], "stream": stream})
        assert r.status == 503 and r.headers["Retry-After"] == "3"
        err = (await r.json())["error"]
        assert err["type"] == "service_unavailable" and err["code"] == reason, err
        metrics = await (await gw.get("/metrics")).text()
        assert f'akr_gateway_unavailable_total{{reason="{reason}"}} 1.0' in metrics
    finally:
        await gw.close()
        await proc_server.close()


async def test_marker_gives_reason_and_retry_after(stub: Stub) -> None:
    stub.answer = "500_marker"
    gw = await ready_gateway(stub.url)
    try:
        r = await gw.post(CHAT, json={"model": "tiny", "messages": []})
        assert r.status == 503 and r.headers["Retry-After"] == "7"
        assert (await r.json())["error"]["code"] == "admission_full"
    finally:
        await gw.close()


async def test_error_after_a_token_stays_in_the_stream(stub: Stub) -> None:
    stub.answer = "sse_503_late"
    gw = await ready_gateway(stub.url)
    try:
        r = await gw.post(CHAT, json={"model": "tiny", "messages": [], "stream": True})
        assert r.status == 200
        text = (await r.read()).decode()
        assert text.startswith('data: {"choices"') and '"code":503' in text
    finally:
        await gw.close()


async def test_waiting_for_an_upstream_slot_has_a_deadline(stub: Stub) -> None:
    stub.answer = "slow"
    gw = await ready_gateway(stub.url, upstream_connections=1, slot_wait_s=0.3)
    try:
        first = asyncio.ensure_future(gw.post(CHAT, json={"model": "tiny", "messages": []}))
        await until(lambda: gw.gw.client.in_use == 1)
        t0 = time.monotonic()
        r = await gw.post(CHAT, json={"model": "tiny", "messages": []})
        waited = time.monotonic() - t0
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert (await r.json())["error"]["code"] == "gateway_busy"
        assert 0.25 < waited < 2.0, waited
        r = await gw.get("/v1/models")  # every route: 503, not an internal error
        assert r.status == 503 and (await r.json())["error"]["code"] == "gateway_busy"
        assert (await first).status == 200
    finally:
        await gw.close()


# --- clients that stop reading -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def non_reader(
    stub: Stub, client_buffer_bytes: int, stall_timeout_s: float = 0.5
) -> AsyncIterator[tuple[Gateway, socket.socket]]:
    """A gateway (one upstream slot) and a client with a 4 KiB receive buffer that sent a
    streamed request and reads nothing (unless the test reads its socket); yields the gateway
    and that socket."""
    cfg = GatewayConfig(
        upstream_url=stub.url,
        host="127.0.0.1",
        port=0,
        stall_timeout_s=stall_timeout_s,
        client_buffer_bytes=client_buffer_bytes,
        upstream_connections=1,
        context_tokens=1000,
    )
    gw = Gateway(cfg)
    _, server = await start_server(cfg, gw)
    port = server.sockets[0].getsockname()[1]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect(("127.0.0.1", port))
        body = json.dumps({"model": "tiny", "stream": True, "messages": []}).encode()
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        await until(lambda: gw.client.in_use == 1)
        yield gw, sock
    finally:
        sock.close()
        await stop_server(gw, server)


async def test_a_non_reader_is_dropped_before_the_buffers_fill(stub: Stub) -> None:
    """The stall watch reads the client's acknowledgements: a client that stopped reading is
    dropped one stall timeout after its receive window shut, not after the gateway's and the
    kernel's buffers (here 1 MiB each, ~50 s of this answer) have filled."""
    stub.answer = "trickle"
    async with non_reader(stub, 1024 * 1024) as (gw, _):
        await until(lambda: gw.metrics.stalled_clients == 1, timeout_s=4.0)
        await asyncio.wait_for(stub.cancelled.wait(), timeout=5)


async def test_a_non_reader_is_dropped_one_stall_timeout_after_its_last_acknowledgement(
    stub: Stub,
) -> None:
    """Its receive window shuts at once (a fast answer): dropped one stall timeout later,
    within a quarter of it, where one check per timeout took two timeouts."""
    stub.answer = "endless"
    async with non_reader(stub, 64 * 1024, stall_timeout_s=1.0) as (gw, _):
        t0 = time.monotonic()
        await until(lambda: gw.metrics.stalled_clients == 1, timeout_s=5.0)
        assert 0.9 <= time.monotonic() - t0 <= 1.6


async def test_a_client_that_reads_slowly_is_never_dropped(stub: Stub) -> None:
    """It empties its receive buffer only every 0.3 s, so the gateway's buffers stay full and
    its window shuts between reads; each read is acknowledged within the stall timeout."""
    stub.answer = "trickle"
    async with non_reader(stub, 16 * 1024, stall_timeout_s=0.5) as (gw, sock):
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        got = 0
        for _ in range(10):
            await asyncio.sleep(0.3)
            got += len(await loop.sock_recv(sock, 8192))
        assert gw.metrics.stalled_clients == 0
        assert got >= 10 * 4096  # it was sent data all along


class _ClosingTransport:
    """A transport whose unsent bytes the test sets; records close and abort."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.closing = False
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.left

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True


async def test_a_closing_connection_is_dropped_only_when_its_client_stops_reading(
    stub: Stub,
) -> None:
    """After a Connection: close answer the gateway closes the connection and flushes what is
    left. A client still taking it, however slowly, gets it all; one that takes nothing for
    a stall timeout is dropped (before, any output left one stall timeout after the close was
    cut, a slow reader's end of answer included)."""
    cfg = GatewayConfig(upstream_url=stub.url, host="127.0.0.1", port=0, stall_timeout_s=0.2)
    proto = HttpProtocol(Gateway(cfg))
    slow = _ClosingTransport(30_000)
    proto.transport = slow  # type: ignore[assignment]
    proto._close()
    assert slow.closing
    for _ in range(15):  # the client takes 2 KB every 0.02 s, for 1.5 stall timeouts
        await asyncio.sleep(0.02)
        slow.left -= 2_000
    assert slow.left == 0 and not slow.aborted
    stuck = _ClosingTransport(30_000)
    proto = HttpProtocol(Gateway(cfg))
    proto.transport = stuck  # type: ignore[assignment]
    proto._close()
    await until(lambda: stuck.aborted, timeout_s=2.0)


async def test_a_client_that_reads_nothing_is_dropped_and_frees_its_slot(stub: Stub) -> None:
    stub.answer = "endless"
    async with non_reader(stub, 64 * 1024) as (gw, sock):
        port = sock.getpeername()[1]
        t0 = time.monotonic()
        await until(lambda: gw.metrics.stalled_clients == 1, timeout_s=5.0)
        assert time.monotonic() - t0 >= 0.4
        await until(lambda: gw.client.in_use == 0)
        await asyncio.wait_for(stub.cancelled.wait(), timeout=5)
        # the one upstream slot serves the next client
        stub.answer = "ok"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n{}"
        )
        raw = await asyncio.wait_for(reader.read(), timeout=5)
        assert raw.startswith(b"HTTP/1.1 200 ")
        writer.close()


async def test_a_failed_model_refresh_keeps_the_watch_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unforeseen error in one refresh must not end the model watch for good."""
    import frontend.gateway as gateway_module

    monkeypatch.setattr(gateway_module, "MODEL_REFRESH_S", 0.01)
    gw = Gateway(GatewayConfig(upstream_url="http://127.0.0.1:9", host="127.0.0.1", port=0))
    calls = 0

    async def refresh() -> Verdict:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a shape nobody foresaw")
        gw.readiness.contexts = {"tiny": 4096}
        return Verdict(True, "")

    monkeypatch.setattr(gw.readiness, "refresh_models", refresh)
    await gw.start()
    try:
        await until(lambda: calls >= 2)
        assert gw.readiness.contexts == {"tiny": 4096}
        assert gw._model_watch is not None and not gw._model_watch.done()
    finally:
        await gw.close()


async def test_the_prompt_limit_follows_the_processors_health_without_a_restart(
    stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model list keeps the context the processor registered at start-up (1000 tokens
    here: Dynamo cannot change it later); the processor's /health says what its workers take
    now. The background watch reads it, with no readiness probe asked and nothing fetched per
    request: a prompt over the listed context passes once the processor reports more, and is
    refused again when its workers shrink."""
    import frontend.gateway as gateway_module

    monkeypatch.setattr(gateway_module, "MODEL_REFRESH_S", 0.05)
    proc, proc_server = await serve_processor_health()
    gw = await make_client(
        stub.url, public_models="tiny", processor_health_url=str(proc_server.make_url("/health"))
    )
    prompt = {"model": "tiny", "messages": [{"role": "user", "content": "a" * 20_000}]}
    try:
        await until(lambda: gw.gw.readiness.contexts)
        r = await gw.post(CHAT, json=prompt)  # 20,000 bytes over 1000 tokens x 8
        assert r.status == 400 and "1000 tokens" in (await r.json())["error"]["message"]
        proc.body = {**proc.body, "model": "tiny", "prompt_limit": 4096}
        await until(lambda: gw.gw.readiness.contexts == {"tiny": 4096})
        assert (await gw.post(CHAT, json=prompt)).status == 200
        assert gw.gw.body_limit() == 4096 * 8 * 3 + 1024 * 1024  # new connections' body limit
        proc.body = {**proc.body, "prompt_limit": 2000}
        await until(lambda: gw.gw.readiness.contexts == {"tiny": 2000})
        r = await gw.post(CHAT, json=prompt)
        assert r.status == 400 and "2000 tokens" in (await r.json())["error"]["message"]
        proc.body = {"status": "starting"}  # states no limit: the model list's again
        await until(lambda: gw.gw.readiness.contexts == {"tiny": 1000})
        proc.body = {"status": "ready", "model": "tiny", "prompt_limit": 4096}
        await until(lambda: gw.gw.readiness.contexts == {"tiny": 4096})
        monkeypatch.setattr(gateway_module, "MODEL_REFRESH_S", 3600.0)
        await asyncio.sleep(0.2)  # the watch's last short sleep ends; it now sleeps an hour
        seen = (proc.hits, stub.model_probes)
        for _ in range(10):
            assert (await gw.post(CHAT, json=prompt)).status == 200
        assert (proc.hits, stub.model_probes) == seen, "fetched per request"
    finally:
        await gw.close()
        await proc_server.close()
