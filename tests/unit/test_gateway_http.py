"""Raw HTTP/1.1 against the deployed server (frontend.server): framing, limits, hostile bytes."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontend.config import GatewayConfig
from frontend.server import start_server, stop_server
from tests.unit.test_gateway import EchoUpstream

BODY = json.dumps({"model": "tiny", "nvext": {"agent_hints": {"prefix_id": "p1"}}}).encode()


@pytest.fixture
async def port() -> AsyncIterator[int]:
    up = EchoUpstream()
    up.server = TestServer(up.app())
    await up.server.start_server()
    cfg = GatewayConfig(upstream_url=up.url, host="127.0.0.1", port=0, max_body_bytes=4096)
    gw, server = await start_server(cfg, request_timeout=0.5)
    yield server.sockets[0].getsockname()[1]
    await stop_server(gw, server)
    await up.server.close()


async def exchange(port: int, data: bytes, *, wait_s: float = 3.0) -> bytes:
    """Send raw bytes, return everything until the server closes (or ``wait_s`` passes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        async with asyncio.timeout(wait_s):
            while chunk := await reader.read(65536):
                out += chunk
    except TimeoutError:
        pass
    writer.close()
    return out


def post(body: bytes = BODY, extra: bytes = b"", path: bytes = b"/v1/chat/completions") -> bytes:
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def statuses(raw: bytes) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(rb"HTTP/1\.[01] (\d{3}) ", raw)]


async def test_keepalive_and_pipelining(port: int) -> None:
    raw = await exchange(
        port,
        post() + post(path=b"/v1/completions") + b"GET /health HTTP/1.1"
        b"\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert statuses(raw) == [200, 200, 200]
    assert raw.index(b'"path": "/v1/chat/completions"') < raw.index(b'"path": "/v1/completions"')
    assert raw.endswith(b'{"status":"ready","models":["tiny"]}')


@pytest.mark.parametrize(
    "data,status",
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"b" * 70_000 + b"\r\n\r\n", 431),
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(200))
            + b"\r\n",
            431,
        ),
        # the field limit holds for a repeated name too, though its values join into one
        (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: y\r\n" * 200 + b"\r\n", 431),
        # request smuggling shapes are refused by llhttp
        (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
    ],
)
async def test_malformed_requests_get_4xx_and_close(port: int, data: bytes, status: int) -> None:
    raw = await exchange(port, data)
    assert statuses(raw)[:1] == [status], raw[:200]
    assert b"Connection: close" in raw
    metrics = await exchange(port, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert re.search(
        rb'akr_gateway_requests_total\{route="[^"]+",status="%d"\} 1\.0' % status, metrics
    )


async def test_upgrade_is_not_switched(port: int) -> None:
    raw = await exchange(
        port,
        b"GET /health HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\nGET /health HTTP/1.1\r\n\r\n",
    )
    assert statuses(raw) == [200] and b"Connection: close" in raw


async def test_oversize_bodies_get_413(port: int) -> None:
    raw = await exchange(port, post(b"{" + b" " * 10_000 + b"}"))
    assert statuses(raw) == [413] and b"body_too_large" in raw
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n" + b"".join(b"400\r\n" + b" " * 1024 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
    )
    raw = await exchange(port, chunked)
    assert statuses(raw) == [413]


async def test_chunked_request_body_within_limit(port: int) -> None:
    half = len(BODY) // 2
    data = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n"
        % (half, BODY[:half], len(BODY) - half, BODY[half:])
    )
    raw = await exchange(port, data)
    assert statuses(raw) == [200] and b'"x-dynamo-session-id": "p1"' in raw


async def test_trailers_are_not_taken_for_headers(port: int) -> None:
    """A chunked body's trailer fields count against the header limits but are not request
    headers: none is forwarded upstream or read as a hint."""
    data = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n%x\r\n%b\r\n0\r\nX-Request-Id: from-trailer\r\n"
        b"Authorization: Bearer from-trailer\r\n\r\n" % (len(BODY), BODY)
    )
    raw = await exchange(port, data)
    assert statuses(raw) == [200] and b'"x-dynamo-session-id": "p1"' in raw
    assert b"from-trailer" not in raw


async def test_expect_continue(port: int) -> None:
    raw = await exchange(port, post(extra=b"Expect: 100-continue\r\nConnection: close\r\n"))
    assert statuses(raw) == [100, 200]


async def test_http10_closes(port: int) -> None:
    raw = await exchange(port, b"GET /health HTTP/1.0\r\n\r\n")
    assert statuses(raw) == [200] and b"Connection: close" in raw


async def test_routes_methods_head(port: int) -> None:
    raw = await exchange(port, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(raw) == [404]
    raw = await exchange(
        port, b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert statuses(raw) == [405] and b"Allow: POST" in raw
    raw = await exchange(port, b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(raw) == [200] and raw.endswith(b"\r\n\r\n")


async def test_streaming_is_chunked(port: int) -> None:
    body = json.dumps({"model": "tiny", "stream": True, "tag": "z", "n_chunks": 5}).encode()
    raw = await exchange(port, post(body, extra=b"Connection: close\r\n"))
    assert statuses(raw) == [200] and b"Transfer-Encoding: chunked" in raw
    assert raw.count(b"z#") == 5 and raw.endswith(b"0\r\n\r\n")


async def test_slow_sender_is_cut_off_with_408(port: int) -> None:
    """Closed by the 0.5 s request-read timeout, with a reason and counted (it was a silent
    close nothing counted)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    await writer.drain()
    async with asyncio.timeout(5):
        raw = await reader.read()
    writer.close()
    assert statuses(raw) == [408] and b"Connection: close" in raw
    assert b'"code":"request_timeout"' in raw.replace(b" ", b"")
    metrics = await exchange(port, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert b'akr_gateway_requests_total{route="/v1/chat/completions",status="408"} 1.0' in metrics


async def test_pipelined_requests_outlast_the_request_read_timeout() -> None:
    """Reading pauses with 8 requests queued; a 9th begun before the pause cannot be finished
    until reading resumes, so the request-read timeout must not run meanwhile (it closed the
    connection and cut the queued answers)."""
    up = EchoUpstream(stall_s=0.2)  # 8 answers take 1.6 s, over the 0.5 s read timeout
    up.server = TestServer(up.app())
    await up.server.start_server()
    cfg = GatewayConfig(upstream_url=up.url, host="127.0.0.1", port=0)
    gw, server = await start_server(cfg, request_timeout=0.5)
    try:
        port = server.sockets[0].getsockname()[1]
        last = post(extra=b"Connection: close\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post() * 8 + last[:20])
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(last[20:])
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read(-1)
        writer.close()
        assert statuses(raw) == [200] * 9
    finally:
        await stop_server(gw, server)
        await up.server.close()


async def test_duplicate_hint_headers_are_rejected(port: int) -> None:
    raw = await exchange(
        port,
        post(extra=b"X-Akr-Total-Requests: 3\r\nx-akr-total-requests: 4\r\nConnection: close\r\n"),
    )
    assert statuses(raw) == [400] and b"header:x-akr-total-requests" in raw


request_line = st.sampled_from(
    [
        b"POST /v1/chat/completions HTTP/1.1\r\n",
        b"GET /v1/models HTTP/1.1\r\n",
        b"GET /health HTTP/1.1\r\n",
        b"POST /v1/completions HTTP/1.0\r\n",
        b"",
    ]
)
header = st.tuples(
    st.sampled_from(
        [
            b"Host",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Expect",
            b"Connection",
            b"x-akr-iat",
            b"X-Dynamo-Session-Id",
            b"x-dynamo-worker-instance-id",
            b"Content-Type",
        ]
    ),
    st.binary(max_size=20),
)


@pytest.fixture(scope="module")
def raw_env() -> Iterator[tuple[asyncio.Runner, int]]:
    """Upstream and deployed server on a loop of their own, for the sync hypothesis test."""
    runner = asyncio.Runner()

    async def setup() -> tuple[EchoUpstream, Any, Any, int]:
        up = EchoUpstream()
        up.server = TestServer(up.app())
        await up.server.start_server()
        cfg = GatewayConfig(upstream_url=up.url, host="127.0.0.1", port=0, max_body_bytes=4096)
        gw, server = await start_server(cfg, request_timeout=0.5)
        return up, gw, server, server.sockets[0].getsockname()[1]

    up, gw, server, p = runner.run(setup())
    yield runner, p

    async def teardown() -> None:
        await stop_server(gw, server)
        assert up.server is not None
        await up.server.close()

    runner.run(teardown())
    runner.close()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=request_line, headers=st.lists(header, max_size=5), tail=st.binary(max_size=300))
def test_random_bytes_never_break_the_server(
    raw_env: tuple[asyncio.Runner, int],
    line: bytes,
    headers: list[tuple[bytes, bytes]],
    tail: bytes,
) -> None:
    runner, p = raw_env
    data = line + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + tail

    async def run() -> None:
        raw = await exchange(p, data, wait_s=1.0)
        for status in statuses(raw):
            assert status < 500, raw[:300]
        ok = await exchange(p, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert statuses(ok) == [200]

    runner.run(run())


async def test_slow_client_holds_the_upstream_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """SSE relay backpressure: while the client reads nothing, the gateway stops reading the
    upstream, so what it buffers for the client stays bounded (the rest waits in the kernel's
    socket buffers and the upstream's); then the client still gets every byte in order."""
    import socket

    from aiohttp import web

    from frontend import server as server_mod

    total = 16 * 1024 * 1024
    piece = b"data: " + b"x" * 65530 + b"\n\n"  # 64 KiB + 2 per event
    written = [0]

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        while written[0] < total:
            await resp.write(piece)  # waits while nobody reads
            written[0] += len(piece)
        return resp

    protocols: list[server_mod.HttpProtocol] = []
    made = server_mod.HttpProtocol.connection_made

    def capture(self: server_mod.HttpProtocol, transport: asyncio.BaseTransport) -> None:
        protocols.append(self)
        made(self, transport)

    monkeypatch.setattr(server_mod.HttpProtocol, "connection_made", capture)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream)
    up = TestServer(app)
    await up.start_server()
    cfg = GatewayConfig(upstream_url=str(up.make_url("")).rstrip("/"), host="127.0.0.1", port=0)
    gw, server = await start_server(cfg)
    try:
        port = server.sockets[0].getsockname()[1]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # no autotuning
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=65536)
        writer.write(post(b'{"model": "tiny", "stream": true}', extra=b"Connection: close\r\n"))
        await writer.drain()
        await asyncio.sleep(1.0)  # read nothing: buffers fill up, the relay pauses
        (proto,) = protocols
        assert proto.relaying is not None, "the answer is not being relayed"
        buffered = proto.transport.get_write_buffer_size()  # type: ignore[union-attr]
        assert buffered < 2 * 1024 * 1024, f"{buffered} bytes buffered for a stalled client"
        raw = bytearray()
        async with asyncio.timeout(30):
            while chunk := await reader.read(1 << 20):
                raw += chunk
        writer.close()
        head, _, rest = bytes(raw).partition(b"\r\n\r\n")
        assert statuses(head + b"\r\n") == [200] and b"Transfer-Encoding: chunked" in head
        body = bytearray()
        at = 0
        while True:  # undo the chunked framing
            eol = rest.index(b"\r\n", at)
            size = int(rest[at:eol], 16)
            if size == 0:
                break
            body += rest[eol + 2 : eol + 2 + size]
            at = eol + 2 + size + 2
        assert written[0] >= total and bytes(body) == piece * (written[0] // len(piece))
    finally:
        await stop_server(gw, server)
        await up.close()


async def test_an_upstream_that_breaks_its_head_is_a_read_error_not_connect() -> None:
    """Reached, then a bad status line: counted as kind="read"; unreachable stays "connect"."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 2000 OK\r\n\r\n")
        await writer.drain()
        writer.close()

    up = await asyncio.start_server(garbage, "127.0.0.1", 0)
    up_url = f"http://127.0.0.1:{up.sockets[0].getsockname()[1]}"
    for upstream, kind in ((up_url, "read"), ("http://127.0.0.1:9", "connect")):
        cfg = GatewayConfig(upstream_url=upstream, host="127.0.0.1", port=0, context_tokens=1000)
        gw, server = await start_server(cfg)
        try:
            port = server.sockets[0].getsockname()[1]
            raw = await exchange(port, post(extra=b"Connection: close\r\n"))
            assert statuses(raw) == [502]
            metrics = await exchange(port, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert b'akr_gateway_upstream_errors_total{kind="%b"} 1.0' % kind.encode() in metrics
        finally:
            await stop_server(gw, server)
    up.close()
    await up.wait_closed()


async def test_expect_continue_behind_a_pipelined_answer_is_not_interleaved() -> None:
    """A pipelined request with Expect: 100-continue while the answer before it is still
    pending: a 100 Continue written then lands before (or inside) that answer, which the
    client reads as its status. It is left out; the client sends its body anyway."""
    up = EchoUpstream(stall_s=0.3)
    up.server = TestServer(up.app())
    await up.server.start_server()
    cfg = GatewayConfig(upstream_url=up.url, host="127.0.0.1", port=0, context_tokens=1000)
    gw, server = await start_server(cfg)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        second = post(extra=b"Expect: 100-continue\r\nConnection: close\r\n")
        head, body = second[: -len(BODY)], second[-len(BODY) :]
        writer.write(post() + head)
        await writer.drain()
        await until_bytes(reader, b"HTTP/1.1 200")  # the first answer, after the stall
        writer.write(body)
        async with asyncio.timeout(10):
            raw = b"HTTP/1.1 200" + await reader.read()
        writer.close()
        assert statuses(raw) == [200, 200]
    finally:
        await stop_server(gw, server)
        await up.server.close()


async def until_bytes(reader: asyncio.StreamReader, marker: bytes) -> None:
    """Read up to and including ``marker`` (what came before it is checked to hold no 100)."""
    async with asyncio.timeout(10):
        seen = await reader.readuntil(marker)
    assert b"100 Continue" not in seen, seen
