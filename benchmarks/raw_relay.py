"""A TCP relay that copies bytes both ways and does nothing else: the floor of any extra hop.

    AKR_GATEWAY_PORT=P AKR_GATEWAY_UPSTREAM_URL=http://127.0.0.1:Q python -m benchmarks.raw_relay

Used by ``python -m benchmarks.gateway_overhead --proxy raw`` to split what the gateway adds
into the cost of one more process on the path (this relay, no HTTP work at all) and the cost
of the gateway's own work per request. ``RAW_RELAY_SPIN_US`` burns that many microseconds of
CPU on each chunk read from a client, to measure how CPU spent per request turns into added
latency on a busy machine. Loopback only; not part of the product.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import uvloop


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.client.transport is not None:
            self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, port: int, spin_s: float) -> None:
        self.port = port
        self.spin_s = spin_s
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.early: list[bytes] = []  # bytes that arrived before the upstream connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, up = await asyncio.get_running_loop().create_connection(
                lambda: _Upstream(self), "127.0.0.1", self.port
            )
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        self.upstream = up
        for data in self.early:
            up.transport.write(data)  # type: ignore[union-attr]
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.spin_s:
            end = time.perf_counter() + self.spin_s
            while time.perf_counter() < end:
                pass
        if self.upstream is None or self.upstream.transport is None:
            self.early.append(data)
        else:
            self.upstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def _serve() -> None:
    port = int(os.environ["AKR_GATEWAY_PORT"])
    upstream_port = int(os.environ["AKR_GATEWAY_UPSTREAM_URL"].rstrip("/").rsplit(":", 1)[1])
    spin_s = float(os.environ.get("RAW_RELAY_SPIN_US", "0")) / 1e6
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream_port, spin_s), "127.0.0.1", port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    uvloop.run(_serve())
