"""SIGTERM drains ``python -m frontend`` (the real process) instead of cutting its answers.

The upstream is a stand-in that streams slowly, so an answer is in flight when the signal
comes; the gateway must finish it, say "draining" on readiness, and still take a request in
its grace period (answered with ``Connection: close``).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from deploy.local_stack import free_port
from tests.unit.gateway_process import spawn_gateway, stand_in_upstream

EVENTS = 6


async def _slow_upstream() -> TestServer:
    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(EVENTS):
            await resp.write(b'data: {"i": %d}\n\n' % i)
            await asyncio.sleep(0.3)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    return await stand_in_upstream(chat)


async def _request(port: int, method: str, path: str, body: bytes = b"") -> tuple[str, bytes]:
    """One request on a keep-alive connection of its own: (head, body as sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).decode("latin-1")
        if "Transfer-Encoding: chunked" in head:
            rest = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 30)
        else:
            length = int(head.split("Content-Length: ", 1)[1].split("\r\n", 1)[0])
            rest = await asyncio.wait_for(reader.readexactly(length), 30)
    finally:
        writer.close()
    return head.rstrip(), rest


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    upstream = await _slow_upstream()
    port = free_port()
    proc = await spawn_gateway(
        str(upstream.make_url("")), port, {"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "1"}
    )
    try:
        for _ in range(300):  # until it listens
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await upstream.close()


CHAT = json.dumps({"model": "tiny", "stream": True, "messages": []}).encode()


async def _open_stream(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A streamed chat request whose first event has arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(CHAT), CHAT)
    )
    await asyncio.wait_for(reader.readuntil(b'data: {"i": 0}'), 10)
    return reader, writer


async def _draining(port: int) -> tuple[str, bytes]:
    """Readiness once the signal has been handled (delivery is asynchronous)."""
    for _ in range(100):
        head, body = await _request(port, "GET", "/ready")
        if head.startswith("HTTP/1.1 503"):
            return head, body
        await asyncio.sleep(0.02)
    raise AssertionError("readiness never turned 503 after SIGTERM")


async def test_sigterm_finishes_answers_in_flight(gateway) -> None:
    proc, port = gateway
    reader, writer = await _open_stream(port)
    proc.send_signal(signal.SIGTERM)
    head, _ = await _draining(port)  # in the grace period: still listening
    assert "Connection: close" in head
    head, body = await _request(port, "POST", "/v1/chat/completions", CHAT)
    assert head.startswith("HTTP/1.1 200") and "Connection: close" in head
    assert body.count(b"data: {") == EVENTS and b"[DONE]" in body
    rest = await asyncio.wait_for(reader.read(), 30)  # the first stream, to its end
    writer.close()
    assert rest.count(b"data: {") == EVENTS - 1 and b"data: [DONE]" in rest
    assert rest.endswith(b"0\r\n\r\n")  # the chunked body's terminator: not cut
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_readiness_says_draining(gateway) -> None:
    proc, port = gateway
    _reader, writer = await _open_stream(port)  # keeps the drain going
    proc.send_signal(signal.SIGTERM)
    head, body = await _draining(port)
    assert json.loads(body) == {"status": "not_ready", "reason": "draining"}
    head, _ = await _request(port, "GET", "/live")
    assert head.startswith("HTTP/1.1 200")
    writer.close()


async def test_a_second_signal_cuts_the_drain(gateway) -> None:
    proc, port = gateway
    reader, writer = await _open_stream(port)
    proc.send_signal(signal.SIGTERM)
    await _draining(port)  # the first signal was handled
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 5) == 0
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert b"[DONE]" not in rest  # cut, as asked
