"""Hostile clients for the reliability checks: streams that are never read, and the latency a
normal client sees meanwhile.

    python -m benchmarks.chaos_clients [--clients 300] [--url URL --model NAME]

Without ``--url`` it starts a local stack of its own (gateway -> stock frontend -> processor ->
2 mockers) and prints the JSON of ``slow_readers()``. The functions are what the chaos suite
and tests/integration/test_gateway_faults.py call:

* ``open_non_readers``: N sockets with a small receive buffer, each sending one streamed chat
  request (``max_tokens`` 1500 by default) and never reading a byte;
* ``normal_latencies``: short streamed requests one after another, read to the end;
* ``slow_readers``: the two together, plus a baseline of the same normal requests first.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

HOLD_MAX_S = 90.0
RCVBUF = 4096  # bytes; the kernel doubles it, and autotuning is off once it is set


def slow_reader_stack_config(**gateway_env: str) -> Any:
    """The stack the slow-reader check runs on: 2 mockers with room for every stream's KV."""
    from deploy.local_stack import StackConfig

    return StackConfig(workers=2, speedup=10.0, gpu_blocks=8192, gateway_env=dict(gateway_env))


def _request(host: str, model: str, max_tokens: int, index: int) -> bytes:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": f"non-reader {index}: write a long story"}],
            "max_tokens": max_tokens,
            "stream": True,
            "ignore_eos": True,  # the whole max_tokens (the stock frontend's extension field)
        }
    ).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def open_non_readers(
    url: str, model: str, clients: int, *, max_tokens: int = 1500, rcvbuf: int = RCVBUF
) -> list[socket.socket]:
    """Open ``clients`` connections that each send a streamed request and never read.

    The caller closes the returned sockets (``close_all``)."""
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    socks: list[socket.socket] = []
    try:
        for i in range(clients):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.settimeout(10.0)
            s.connect((host, port))
            s.sendall(_request(f"{host}:{port}", model, max_tokens, i))
            socks.append(s)
    except BaseException:
        close_all(socks)
        raise
    return socks


def answered_200(socks: list[socket.socket]) -> int:
    """How many of ``socks`` got a 200 status line (peeked: nothing is consumed, so the
    receive window stays shut)."""
    ok = 0
    for s in socks:
        try:
            s.settimeout(0.5)
            ok += s.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 200"
        except OSError:
            pass
    return ok


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def normal_request(url: str, model: str, client: httpx.Client, max_tokens: int = 8) -> float:
    """One short streamed chat request read to the end; its latency in seconds."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "a normal question"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    t0 = time.perf_counter()
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"normal request got {resp.status_code}: {resp.read()[:300]!r}")
        for _ in resp.iter_bytes():
            pass
    return time.perf_counter() - t0


def normal_latencies(
    url: str,
    model: str,
    count: int,
    *,
    gap_s: float = 0.1,
    timeout_s: float = 60.0,
    direct_url: str | None = None,
    direct: list[float] | None = None,
) -> list[float]:
    """``count`` normal requests one after another, ``gap_s`` apart; latencies in seconds.
    With ``direct_url`` each is followed by the same request there (the stock frontend, to
    tell the gateway's share from the stack's), its latency appended to ``direct``."""
    out = []
    with httpx.Client(timeout=timeout_s) as client:
        for _ in range(count):
            out.append(normal_request(url, model, client))
            if direct_url is not None and direct is not None:
                direct.append(normal_request(direct_url, model, client))
            time.sleep(gap_s)
    return out


def _stats(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat) * 1e3
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p99_ms": round(float(np.percentile(a, 99)), 1),
        "max_ms": round(float(a.max()), 1),
    }


def slow_readers(
    url: str,
    model: str,
    *,
    clients: int = 300,
    normal: int = 60,
    gap_s: float = 0.1,
    max_tokens: int = 1500,
    hold_s: float | None = None,
    timeout_s: float = 10.0,
    direct_url: str | None = None,
    hold_until: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Baseline normal latencies, then the same while ``clients`` non-readers are connected.

    The non-readers stay open for ``hold_s`` (default: as long as the measurement), then until
    ``hold_until()`` is true (at most ``HOLD_MAX_S``), and are closed at the end. Returns
    ``{"clients", "streams_200", "normal_p99_ms", "normal_p50_ms", "normal_max_ms",
    "baseline_p99_ms", "baseline_p50_ms", "normal_requests", "open_s", "held_s"}``, and
    with ``direct_url`` (the stock frontend) ``direct_p99_ms`` and
    ``direct_p50_ms`` of the same requests sent there right after each."""
    normal_latencies(url, model, 3, gap_s=0.0)  # warm-up: connections, caches
    base = _stats(normal_latencies(url, model, normal, gap_s=gap_s, timeout_s=timeout_s))
    t0 = time.perf_counter()
    socks = open_non_readers(url, model, clients, max_tokens=max_tokens)
    open_s = time.perf_counter() - t0
    try:
        direct: list[float] = []
        lat = normal_latencies(
            url,
            model,
            normal,
            gap_s=gap_s,
            timeout_s=timeout_s,
            direct_url=direct_url,
            direct=direct,
        )
        streams_200 = answered_200(socks)
        if hold_s is not None:
            time.sleep(max(0.0, hold_s - (time.perf_counter() - t0)))
        while hold_until is not None and not hold_until():
            if time.perf_counter() - t0 > HOLD_MAX_S:
                raise AssertionError(f"hold_until still false after {HOLD_MAX_S} s")
            time.sleep(0.2)
        held_s = time.perf_counter() - t0
    finally:
        close_all(socks)
    under = _stats(lat)
    return {
        "clients": clients,
        "streams_200": streams_200,
        "normal_p99_ms": under["p99_ms"],
        "normal_p50_ms": under["p50_ms"],
        "normal_max_ms": under["max_ms"],
        "baseline_p99_ms": base["p99_ms"],
        "baseline_p50_ms": base["p50_ms"],
        "normal_requests": normal,
        "open_s": round(open_s, 2),
        "held_s": round(held_s, 1),
        **({"direct_p99_ms": _stats(direct)["p99_ms"]} if direct else {}),
        **({"direct_p50_ms": _stats(direct)["p50_ms"]} if direct else {}),
    }


def in_background(fn: Any, *args: Any, **kw: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a thread; the dict gets ``result`` or ``error`` when it ends."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args, **kw)
        except BaseException as e:  # reported to the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", help="gateway base URL (default: start a local stack)")
    ap.add_argument("--model", default="akr-tiny")
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--normal", type=int, default=60)
    ap.add_argument("--max-tokens", type=int, default=1500)
    args = ap.parse_args()
    kw = {"clients": args.clients, "normal": args.normal, "max_tokens": args.max_tokens}
    if args.url:
        print(json.dumps(slow_readers(args.url, args.model, **kw), indent=1))
        return
    from deploy.local_stack import LocalStack

    with LocalStack(slow_reader_stack_config()) as stack:
        got = slow_readers(stack.url, stack.model_name, direct_url=stack.frontend_url, **kw)
        print(json.dumps(got, indent=1))


if __name__ == "__main__":
    main()
