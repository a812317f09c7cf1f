"""What relaying a streamed answer costs the gateway: CPU per SSE chunk, first-chunk latency.

    python -m benchmarks.gateway_stream [--streams 240] [--concurrency 8] [--chunks 40]
                                        [--gap-ms 5] [--gateway-src DIR]

``benchmarks.gateway_overhead`` measures whole one-token answers; agent traffic streams tokens,
and every token's SSE event crosses the gateway once. Here the upstream is a stand-in in this
process (no Dynamo: it answers every POST with ``--chunks`` SSE events ``--gap-ms`` apart,
chunked, like the stock frontend), so the gateway (``python -m frontend``, a separate process)
is the only thing measured. Two targets alternate in rounds under the same closed-loop client:
``direct`` (client -> stand-in) and ``gateway`` (client -> gateway -> stand-in). Reported:
first-chunk latency p50/p90 per target and the difference, and the gateway's CPU time (from
/proc) per stream and per relayed SSE event (``..._per_chunk``: one event is one upstream chunk;
the client counts events, since the gateway may put two that arrive in one read into one HTTP
chunk). ``--gateway-src DIR`` runs the gateway from another
checkout (e.g. a ``git worktree`` of an older commit) for a before/after comparison in one
sitting. Writes ``benchmarks/results/gateway_stream.json``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.gateway_overhead import cpu_seconds, latency_stats, wait_health
from deploy.local_stack import free_port

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
EVENT = (
    b'data: {"id":"x","object":"chat.completion.chunk",'
    b'"choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'
)
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


class _StandIn(asyncio.Protocol):
    """Answers each request with ``chunks`` SSE events ``gap`` seconds apart."""

    def __init__(self, chunks: int, gap: float) -> None:
        self.chunks, self.gap = chunks, gap
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buf[:end].lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            asyncio.get_running_loop().create_task(self._stream())

    async def _stream(self) -> None:
        t = self.transport
        assert t is not None
        t.write(HEAD)
        framed = b"%x\r\n%b\r\n" % (len(EVENT), EVENT)
        for _ in range(self.chunks):
            if t.is_closing():
                return
            t.write(framed)
            await asyncio.sleep(self.gap)
        if not t.is_closing():
            t.write(b"0\r\n\r\n")


def _request() -> bytes:
    body = json.dumps(
        {
            "model": "m",
            "stream": True,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hello"}],
            "nvext": {
                "agent_hints": {"prefix_id": "s-1", "total_requests": 4, "iat": 250, "osl": 64}
            },
        }
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )


async def _streams(port: int, n: int, concurrency: int, first: list[float]) -> int:
    """Closed loop: ``concurrency`` keep-alive clients, ``n`` streams; returns SSE events read."""
    req = _request()
    counts = [0]

    async def client(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(k):
            t0 = time.perf_counter()
            writer.write(req)
            await reader.readuntil(b"\r\n\r\n")
            seen, body = False, []
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                body.append((await reader.readexactly(size + 2))[:size])
                if size == 0:
                    break
                if not seen:
                    first.append(time.perf_counter() - t0)
                    seen = True
            # Count SSE events, not HTTP chunks: the gateway frames each upstream read as one
            # chunk, so two events that arrive in one read share a chunk (and one may be split).
            counts[0] += b"".join(body).count(b"data: ")
        writer.close()

    per = max(1, n // concurrency)
    await asyncio.gather(*(client(per) for _ in range(concurrency)))
    return counts[0]


async def _measure(
    args: argparse.Namespace, up_port: int, gw_port: int, gw_pid: int
) -> dict[str, Any]:
    first: dict[str, list[float]] = {"direct": [], "gateway": []}
    cpu_s, streams, chunks = 0.0, 0, 0
    per_round = max(args.concurrency, args.streams // args.rounds)
    await _streams(gw_port, args.concurrency, args.concurrency, [])  # warm-up
    for r in range(args.rounds):
        order = ("direct", "gateway") if r % 2 == 0 else ("gateway", "direct")
        for target in order:
            if target == "direct":
                await _streams(up_port, per_round, args.concurrency, first["direct"])
                continue
            c0 = cpu_seconds(gw_pid)
            n_before = len(first["gateway"])
            chunks += await _streams(gw_port, per_round, args.concurrency, first["gateway"])
            cpu_s += cpu_seconds(gw_pid) - c0
            streams += len(first["gateway"]) - n_before
    out: dict[str, Any] = {}
    for target, xs in first.items():
        st = latency_stats(xs)
        out[target] = {
            "first_chunk_p50_ms": st["p50_ms"],
            "first_chunk_p90_ms": st["p90_ms"],
            "streams": st["n"],
        }
    out["added_first_chunk_p50_ms"] = (
        out["gateway"]["first_chunk_p50_ms"] - out["direct"]["first_chunk_p50_ms"]
    )
    out["gateway_cpu_us_per_stream"] = cpu_s * 1e6 / max(streams, 1)
    out["gateway_cpu_us_per_chunk"] = cpu_s * 1e6 / max(chunks, 1)
    out["chunks_per_stream"] = chunks / max(streams, 1)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    up_port, gw_port = free_port(), free_port()
    src = Path(args.gateway_src).resolve() if args.gateway_src else REPO
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "AKR_GATEWAY_HOST": "127.0.0.1",
        "AKR_GATEWAY_PORT": str(gw_port),
        "AKR_GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{up_port}",
        "AKR_GATEWAY_LOG_LEVEL": "WARNING",
    }

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _StandIn(args.chunks, args.gap_ms / 1e3), "127.0.0.1", up_port
        )
        # Popen returns once the child is forked; the gateway then runs beside this loop.
        proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "frontend"], env=env, cwd=src, start_new_session=True
        )
        try:
            await asyncio.to_thread(wait_health, f"http://127.0.0.1:{gw_port}/live", proc)
            return await _measure(args, up_port, gw_port, proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            server.close()

    res = uvloop.run(main())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=src, text=True, capture_output=True
    ).stdout.strip()
    return {
        "label": (
            f"stand-in SSE upstream in the benchmark process, gateway alone measured, on a "
            f"{os.cpu_count()}-core machine; not GPU numbers"
        ),
        "gateway_code": commit or str(src.name),
        **res,
        "config": {
            k: getattr(args, k) for k in ("streams", "concurrency", "chunks", "gap_ms", "rounds")
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_after": os.getloadavg(),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--streams", type=int, default=240)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--chunks", type=int, default=40, help="SSE events per answer")
    ap.add_argument("--gap-ms", type=float, default=5.0, help="between events (a decode step)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--gateway-src", help="checkout to run the gateway from (default: this one)")
    ap.add_argument("--out", default=str(RESULTS / "gateway_stream.json"))
    args = ap.parse_args()
    res = run(args)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: res[k]
                for k in (
                    "gateway_code",
                    "added_first_chunk_p50_ms",
                    "gateway_cpu_us_per_stream",
                    "gateway_cpu_us_per_chunk",
                )
            }
        )
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
