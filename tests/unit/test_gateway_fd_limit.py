"""``python -m frontend`` (the real process) when clients would take every file descriptor.

The gateway runs with RLIMIT_NOFILE lowered to 128 in front of a stand-in upstream that
answers after 0.5 s. Measured before the connection cap: the accept loop does not spin or log
(libuv accepts and closes what it has no descriptor for), and after the clients leave /live
and a chat are answered again. But while they are connected every request the gateway did
accept fails with 502 "cannot connect to upstream: Too many open files", counted as an
upstream connect error: 100 concurrent chats got 14 answers and 86 502s, 300 got none at all.
With the cap (half the descriptors left at start, frontend/server.py) a request is either
served or refused with 503 and Retry-After, counted as ``too_many_connections``, and /live is
still answered.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from deploy.local_stack import free_port
from frontend import server
from tests.unit.gateway_process import REPO, spawn_gateway, stand_in_upstream

LIMIT = 128
CHAT = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def _upstream() -> TestServer:
    async def chat(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.5)  # so a burst's requests are in flight together
        return web.json_response({"id": "x", "object": "chat.completion", "choices": []})

    return await stand_in_upstream(chat)


def _lower_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[int, int, Path]]:
    """(port, pid, stderr path) of a gateway limited to ``LIMIT`` descriptors."""
    upstream = await _upstream()
    port = free_port()
    err = tmp_path / "gateway.err"
    with err.open("wb") as stderr:
        proc = await spawn_gateway(
            str(upstream.make_url("")), port, stderr=stderr, preexec_fn=_lower_fd_limit
        )
    try:
        for _ in range(300):  # until it answers
            if (await _ask(port, "GET", "/live", wait_s=1.0))[0] == 200:
                break
            await asyncio.sleep(0.05)
        yield port, proc.pid, err
    finally:
        proc.kill()
        await proc.wait()
        await upstream.close()


async def _ask(
    port: int, method: str, path: str, body: bytes = b"", wait_s: float = 10.0
) -> tuple[int | None, bytes]:
    """(status, head + body) of one request on a connection of its own; None: no answer (the
    connection was closed or reset first)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None, b""
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait_s)
        length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
        return int(head.split(b" ", 2)[1]), head + await reader.readexactly(length)
    except (OSError, asyncio.IncompleteReadError):
        return None, b""
    finally:
        writer.close()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metric(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_held_connections_past_the_fd_limit(gateway) -> None:
    """Twice the limit in idle connections: no spin, no log flood; meanwhile /live is answered
    and a chat is refused with 503 and Retry-After (before the cap: closed unanswered, or 502
    blaming the upstream on a connection it had accepted); once they close, both are served."""
    port, pid, err = gateway
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2 * LIMIT)]
    try:
        await asyncio.sleep(0.5)
        cpu, logged = _cpu_s(pid), err.stat().st_size
        await asyncio.sleep(2.5)  # past PROBE_WAIT_S: held connections on probe slots closed
        assert _cpu_s(pid) - cpu < 0.5, "the gateway spins while out of descriptors"
        assert err.stat().st_size - logged < 2000, "the gateway logs in a loop"
        assert (await _ask(port, "GET", "/live"))[0] == 200
        status, answer = await _ask(port, "POST", "/v1/chat/completions", CHAT)
        assert status == 503, answer
        assert b"Retry-After: " in answer and b"too_many_connections" in answer
    finally:
        for s in held:
            s.close()
    await asyncio.sleep(0.5)
    assert (await _ask(port, "GET", "/live"))[0] == 200
    assert (await _ask(port, "POST", "/v1/chat/completions", CHAT))[0] == 200


def test_the_cap_leaves_an_upstream_descriptor_per_connection() -> None:
    """Half of what is left after start, the headroom and the probe connections; none when
    the limit is infinite; at least one."""
    left = 128 - 14 - server.FD_HEADROOM - server.PROBE_CONNECTIONS
    assert server.connection_cap(128, 14) == left // 2
    assert server.connection_cap(resource.RLIM_INFINITY, 14) is None
    assert server.connection_cap(16, 14) == 1


async def test_a_burst_past_the_fd_limit_is_served_or_refused_never_502(gateway) -> None:
    """300 concurrent chats at 128 descriptors: before the cap none was served (114 got 502,
    the rest a closed connection). Now the admitted ones are served and the others get 503
    or, past what the kernel let the gateway accept, a closed connection."""
    port, _, _ = gateway
    results = await asyncio.gather(
        *(_ask(port, "POST", "/v1/chat/completions", CHAT) for _ in range(300))
    )
    statuses = collections.Counter(status for status, _ in results)
    assert statuses[200] >= 20, statuses
    assert set(statuses) <= {200, 503, None}, statuses
    metrics = (await _ask(port, "GET", "/metrics"))[1].decode()
    assert _metric(metrics, 'akr_gateway_upstream_errors_total{kind="connect"}') == 0
    refused = _metric(metrics, 'akr_gateway_unavailable_total{reason="too_many_connections"}')
    assert refused == statuses[503] > 0, (refused, statuses)
    assert (await _ask(port, "POST", "/v1/chat/completions", CHAT))[0] == 200


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    """A soft limit of 128 under a hard one of 4096: the gateway takes 4096 (a shell's soft
    1024 would cap it at ~480 connections); a hard limit of 128 stays 128."""
    probe = "from frontend.server import raise_fd_limit; print(raise_fd_limit())"
    for soft, hard, want in ((128, 4096, 4096), (128, 128, 128)):

        def limit(soft: int = soft, hard: int = hard) -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        out = subprocess.run(
            [
                sys.executable,
                "-c",
                probe + "; import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])",
            ],
            cwd=REPO,
            preexec_fn=limit,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert out == [str(want), str(want)], (soft, hard, out)
