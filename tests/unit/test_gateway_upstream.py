"""The lean upstream client: keep-alive reuse, stale connections, timeouts, streaming, errors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from frontend.upstream import UpstreamBroken, UpstreamClient, UpstreamError, UpstreamTimeout


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    peers: list[object] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport)
        body = await request.read()
        if request.query.get("stall"):
            await asyncio.sleep(float(request.query["stall"]))
        if request.query.get("close"):
            return web.Response(body=body, headers={"Connection": "close"})
        if request.query.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for _ in range(int(request.query["stream"])):
                await resp.write(b"x" * 65536)
            return resp
        return web.Response(body=body + b"|" + request.headers.get("x-k", "").encode())

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    srv = TestServer(app)
    srv.peers = peers  # type: ignore[attr-defined]
    await srv.start_server()
    yield srv
    await srv.close()


def url(srv: TestServer) -> str:
    return str(srv.make_url("")).rstrip("/")


@contextlib.asynccontextmanager
async def serving_get(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[TestServer]:
    """An upstream that answers ``GET /`` with ``handler``, for the length of the block."""
    app = web.Application()
    app.router.add_get("/", handler)
    srv = TestServer(app)
    await srv.start_server()
    try:
        yield srv
    finally:
        await srv.close()


async def test_keepalive_reuses_one_connection(server: TestServer) -> None:
    c = UpstreamClient(url(server))
    for i in range(5):
        r = await c.request("POST", "/a", f"b{i}".encode(), {"x-k": "v"})
        assert r.status == 200 and await r.read() == f"b{i}|v".encode()
    assert len({id(t) for t in server.peers}) == 1  # type: ignore[attr-defined]
    await c.close()


async def test_connection_close_is_honoured(server: TestServer) -> None:
    c = UpstreamClient(url(server))
    for _ in range(3):
        r = await c.request("POST", "/a?close=1", b"z")
        assert await r.read() == b"z"
    assert len({id(t) for t in server.peers}) == 3  # type: ignore[attr-defined]
    await c.close()


async def test_stale_pooled_connection_is_retried(server: TestServer) -> None:
    c = UpstreamClient(url(server))
    r = await c.request("GET", "/a")
    await r.read()
    for t in server.peers:  # type: ignore[attr-defined]
        t.close()  # the upstream drops its idle keep-alive connection
    await asyncio.sleep(0.05)
    r = await c.request("POST", "/b", b"again")
    assert await r.read() == b"again|"
    await c.close()


async def test_streaming_and_backpressure(server: TestServer) -> None:
    c = UpstreamClient(url(server))
    r = await c.request("GET", "/s?stream=32")  # 2 MiB
    got: list[bytes] = []
    await r.relay(got.append)
    assert sum(map(len, got)) == 32 * 65536
    # The connection went back to the pool and works.
    r = await c.request("POST", "/a", b"ok")
    assert await r.read() == b"ok|"
    await c.close()


async def test_a_whole_body_over_the_high_water_mark_is_read(server: TestServer) -> None:
    """read() of a non-streamed answer bigger than the buffer's high-water mark: the buffer's
    pause is lifted as the read goes, instead of the read waiting out its timeout."""
    c = UpstreamClient(url(server), read_timeout=2.0)
    big = b"x" * (1024 * 1024)
    r = await c.request("POST", "/a", big)
    async with asyncio.timeout(1.5):  # before the read timeout
        assert await r.read() == big + b"|"
    assert c.in_use == 0
    r = await c.request("POST", "/a", b"again")  # the connection went back to the pool
    assert await r.read() == b"again|"
    await c.close()


async def test_read_timeout() -> None:
    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    async with serving_get(stall) as srv:
        c = UpstreamClient(url(srv), read_timeout=0.2)
        with pytest.raises(UpstreamTimeout):
            await c.request("GET", "/")
        await c.close()


async def test_unreachable_upstream() -> None:
    c = UpstreamClient("http://127.0.0.1:9")
    with pytest.raises(UpstreamError) as err:
        await c.request("GET", "/")
    assert not isinstance(err.value, UpstreamBroken)  # not reached: a connect failure
    await c.close()


async def test_garbage_from_upstream() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    c = UpstreamClient(f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamBroken):  # reached, then broke: the gateway counts a read error
        await c.request("GET", "/")
    await c.close()
    srv.close()
    await srv.wait_closed()


async def test_pool_size_bounds_concurrency(server: TestServer) -> None:
    c = UpstreamClient(url(server), pool_size=2)

    async def one(i: int) -> bytes:
        r = await c.request("POST", "/a?stall=0.05", str(i).encode())
        return await r.read()

    got = await asyncio.gather(*(one(i) for i in range(6)))
    assert got == [f"{i}|".encode() for i in range(6)]
    assert len({id(t) for t in server.peers}) <= 2  # type: ignore[attr-defined]
    await c.close()


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux-only")
async def test_reads_are_acknowledged_at_once() -> None:
    """Why ``quickack``: on a keep-alive connection the kernel switches to delayed ACKs after
    the first exchange (getsockopt TCP_QUICKACK reads 0), which with an upstream that leaves
    Nagle on (Dynamo 1.6.1's HTTP server) holds back its next small write. With the default,
    a read in the middle of a response leaves the connection acknowledging at once."""
    more = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 1\n\n")
        await more.wait()  # the rest only after the client looked at its socket
        await resp.write(b"data: 2\n\n")
        return resp

    async def ack_modes(client: UpstreamClient) -> list[int]:
        modes = []
        for _ in range(4):
            more.clear()
            r = await client.request("GET", "/")
            conn = r._conn
            assert conn is not None and conn.transport is not None
            while not conn.buffered:  # the first event has been read
                await conn.wait(5.0)
            sock = conn.transport.get_extra_info("socket")
            modes.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))
            more.set()
            assert await r.read() == b"data: 1\n\ndata: 2\n\n"
        await client.close()
        return modes

    async with serving_get(stream) as srv:
        assert await ack_modes(UpstreamClient(url(srv))) == [1] * 4
        assert 0 in (await ack_modes(UpstreamClient(url(srv), quickack=False)))[1:]


def test_rejects_non_http_url() -> None:
    with pytest.raises(ValueError):
        UpstreamClient("https://example.invalid")


async def test_relay_hands_every_chunk_over_and_pauses(server: TestServer) -> None:
    """relay(): all bytes in order; paused, nothing more is read; the connection is reused."""
    c = UpstreamClient(url(server))
    r = await c.request("GET", "/s?stream=32")  # 2 MiB in 64 KiB writes
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    sizes: list[int] = []

    def sink(chunk: bytes) -> None:
        got.append(chunk)
        if len(got) == 3:  # a slow client: hold the upstream back for a while
            r.pause()  # the rest of the bytes already read still arrives
            loop.call_later(0.05, lambda: sizes.append(sum(map(len, got))))
            loop.call_later(0.25, check_and_resume)

    def check_and_resume() -> None:
        sizes.append(sum(map(len, got)))
        r.resume()

    await r.relay(sink)
    assert b"".join(got) == b"x" * (32 * 65536)
    assert len(sizes) == 2 and sizes[0] == sizes[1] < 32 * 65536  # nothing read while paused
    r2 = await c.request("POST", "/a", b"ok")
    assert await r2.read() == b"ok|"
    assert len({id(t) for t in server.peers}) == 1  # type: ignore[attr-defined]
    await c.close()


async def test_relay_idle_timeout_but_not_while_paused() -> None:
    """A silent upstream times the relay out; a paused one (slow client) does not."""

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 1\n\n")
        if request.query.get("silent"):
            await asyncio.sleep(5)
        else:
            for _ in range(3):
                await resp.write(b"data: more\n\n")
        return resp

    async with serving_get(handle) as srv:
        c = UpstreamClient(url(srv), read_timeout=0.2)
        r = await c.request("GET", "/?silent=1")
        got: list[bytes] = []
        with pytest.raises(UpstreamTimeout):
            await r.relay(got.append)
        r.close()
        assert b"".join(got) == b"data: 1\n\n"

        r = await c.request("GET", "/")
        r.pause()  # held back three read timeouts long: no timeout
        asyncio.get_running_loop().call_later(0.6, r.resume)
        got = []
        await r.relay(got.append)
        assert b"".join(got) == b"data: 1\n\n" + b"data: more\n\n" * 3
        await c.close()


async def test_relay_starting_paused_reads_nothing_after_the_buffered_part(
    server: TestServer,
) -> None:
    """relay(paused=True): what arrived before the relay (up to the buffering high-water
    mark, where reading stopped) is handed over, then nothing until resume()."""
    c = UpstreamClient(url(server))
    r = await c.request("GET", "/s?stream=32")  # 2 MiB
    await asyncio.sleep(0.2)  # the body buffers up to the high-water mark and reading stops
    got: list[bytes] = []
    sizes: list[int] = []
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, lambda: sizes.append(sum(map(len, got))))
    loop.call_later(0.3, lambda: (sizes.append(sum(map(len, got))), r.resume()))
    await r.relay(got.append, paused=True)
    assert len(sizes) == 2 and 0 < sizes[0] == sizes[1] < 32 * 65536
    assert b"".join(got) == b"x" * (32 * 65536)
    await c.close()
