"""A lean pooled HTTP/1.1 client for the one trusted upstream (the stock Dynamo frontend).

Why not ``aiohttp.ClientSession``: on the 2-core VM here its per-request bookkeeping (request
and response objects, URL handling, tracing hooks, timers) cost about as much CPU as the whole
server side and doubled what the gateway adds to latency. This client does only what a gateway
needs: one pre-built request buffer written in one ``transport.write``, the response parsed by
``httptools`` (llhttp, the parser of uvicorn, by the uvloop authors), keep-alive connections in
an LIFO pool, and streaming with backpressure (the upstream socket stops being read while the
client is slow). Talks only to the upstream given at construction, so it never follows
redirects, handles no cookies and sends no proxy headers.

A streamed body is read with ``relay(sink)``, which hands each chunk to ``sink`` inside the
socket's read callback: a token's event goes from the upstream socket to the client socket
without waking the request's task (no task switch, future or timer per chunk).
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import httptools

__all__ = [
    "UpstreamBusy",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
]

_HIGH_WATER = 256 * 1024  # buffered response bytes beyond which the upstream socket is paused
# Why acknowledge at once: Dynamo 1.6.1's HTTP server (the stock frontend) does not set
# TCP_NODELAY on the connections it accepts (strace: no setsockopt on them), so Nagle holds
# each small SSE write until the previous one is acknowledged, and a pooled keep-alive
# connection like ours is in the kernel's delayed-ACK ("pingpong") mode: under load a streamed
# token then waits for the delayed ACK before the gateway can read it (docs/DESIGN.md, "Delayed
# ACKs"). Setting TCP_QUICKACK after a read sends the pending ACK now. Linux only; elsewhere
# this is None and nothing is done.
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class UpstreamError(ConnectionError):
    """The upstream could not be reached or broke the response."""


class UpstreamBroken(UpstreamError):
    """The upstream answered, then broke its response before the headers were whole (a bad
    status line, a close mid-head): not a failure to reach it."""


class UpstreamTimeout(TimeoutError):
    """Connect or read timeout."""


class UpstreamBusy(Exception):
    """Every upstream slot stayed taken for the whole slot wait; nothing was sent."""


class _Conn(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time."""

    def __init__(self, quickack: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        self.quickack = quickack and _TCP_QUICKACK is not None
        self.sock: socket.socket | None = None  # for TCP_QUICKACK; None when off
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.done = False
        self.got_bytes = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.headers_done = False
        self.keep_alive = False
        self.paused = False
        self.sink: Callable[[bytes], None] | None = None  # relay(): body chunks go here
        self.activity = 0  # body chunks handed to the sink (the relay's idle timeout)

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.quickack:
            self.sock = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamError(f"bad response from upstream: {e}"))
            self.close()
            return
        # Once the response is complete the upstream writes nothing more on it, so nothing
        # waits for this ACK (it rides on our next request): a 1-read answer costs no syscall.
        if self.sock is not None and not self.done and not self.closed:
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)  # type: ignore[arg-type]
            except OSError:  # the connection is going away; nothing left to acknowledge
                pass

    def eof_received(self) -> bool | None:
        self.closed = True
        self._end("upstream closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end(f"upstream connection lost: {exc or 'closed'}")

    def _end(self, why: str) -> None:
        if self.done:
            return
        if (
            self.headers_done
            and "content-length" not in self.headers
            and "transfer-encoding" not in self.headers
        ):
            self.done = True  # a body delimited by the end of the connection
            self._wake()
        else:
            self._fail(UpstreamError(why))

    # -- httptools callbacks -----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # only valid before completion
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        if sink is not None:
            self.activity += 1
            sink(body)
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER:
            self.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self._wake()

    # -- helpers -----------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # A call_later per read is cheaper than an asyncio.timeout scope on the relay's hot path.
    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109
        """Until the next parser event (or an error); raises on timeout or error."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        handle = loop.call_later(timeout, self._timeout, self.waiter)
        try:
            await self.waiter
        finally:
            handle.cancel()
            self.waiter = None
        if self.error is not None:
            raise self.error

    @staticmethod
    def _timeout(fut: asyncio.Future[None]) -> None:
        if not fut.done():
            fut.set_exception(UpstreamTimeout("upstream read timed out"))

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        self.resume_reading()
        return data

    def pause_reading(self) -> None:
        """Stop reading the socket (idempotent); the upstream's sends then block."""
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()


class UpstreamResponse:
    """Status and headers are known; read the body with ``read()`` or ``relay()``."""

    def __init__(self, client: UpstreamClient, conn: _Conn) -> None:
        self._client = client
        self._conn: _Conn | None = conn
        self.status = conn.status
        self.headers = conn.headers

    async def read(self) -> bytes:
        """The whole body. Why it takes what arrived at each wake: the buffer's high-water
        pause is for streams, which a relay drains; a whole-body read that left it paused got
        no further byte and waited out the read timeout (any answer over 256 KiB: 504)."""
        conn = self._require()
        parts: list[bytes] = []
        while not conn.done:
            await conn.wait(self._client.read_timeout)
            if conn.paused:
                parts.append(conn.take())  # take() resumes reading
        parts.append(conn.take())
        self.release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def peek_event(self) -> bytes:
        """Wait for the first whole SSE event (or the end of the body) and return what has
        arrived so far, without consuming it: ``relay()`` hands it over first."""
        conn = self._require()
        while not conn.done and not any(b"\n\n" in c or b"\r\n\r\n" in c for c in conn.chunks):
            if conn.buffered > _HIGH_WATER:
                break
            await conn.wait(self._client.read_timeout)
        return b"".join(conn.chunks)

    async def relay(self, sink: Callable[[bytes], None], *, paused: bool = False) -> None:
        """Hand every body chunk to ``sink`` as it arrives, from the socket's read callback.

        No task switch, future or timer per chunk. The caller applies backpressure with
        ``pause()``/``resume()``; ``paused`` says the consumer is already full, so after handing
        over what arrived with the headers the upstream stays unread until ``resume()``.
        Returns at the end of the body (the connection goes back to
        the pool); raises ``UpstreamTimeout`` when the upstream sent nothing for
        ``read_timeout`` (up to twice that) while not paused, ``UpstreamError`` when it breaks
        the response.
        """
        conn = self._require()
        if conn.buffered:  # arrived with the headers, before the relay started
            sink(conn.take())  # (take() lifts a high-water pause of the buffering)
        if paused:
            conn.pause_reading()
        conn.sink = sink
        try:
            while not conn.done:
                seen = conn.activity
                try:
                    await conn.wait(self._client.read_timeout)
                except UpstreamTimeout:
                    # Silent only if no chunk came and we were not the ones holding it back
                    # (paused for a slow client).
                    if (conn.activity == seen and not conn.paused) or conn.error is not None:
                        raise
        finally:
            conn.sink = None
        self.release()

    def pause(self) -> None:
        """Stop reading the upstream (the consumer is behind)."""
        if self._conn is not None:
            self._conn.pause_reading()

    def resume(self) -> None:
        if self._conn is not None:
            self._conn.resume_reading()

    def _require(self) -> _Conn:
        if self._conn is None:
            raise UpstreamError("response already released")
        return self._conn

    def release(self) -> None:
        """Return the connection to the pool (if the response was complete) or close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.done and not conn.closed and conn.keep_alive:
            self._client._put_back(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Abort: drop the connection, which tells the upstream the client went away."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def split_http_url(url: str) -> tuple[str, int, str]:
    """``http://host[:port][/path]`` as host, port (80 if none) and path without its trailing
    ``/``; ``ValueError`` saying what is wrong. Plain HTTP only: the gateway's upstreams (the
    stock frontend, the processor's health) run beside it."""
    u = urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError("expected an http://host[:port] URL")
    return u.hostname, u.port or 80, u.path.rstrip("/")  # .port: ValueError if not a port


class UpstreamClient:
    """Pooled keep-alive HTTP/1.1 client for one ``http://host:port`` upstream."""

    def __init__(
        self,
        base_url: str,
        *,
        pool_size: int = 256,
        connect_timeout: float = 5.0,
        read_timeout: float = 300.0,
        keepalive_timeout: float = 30.0,
        quickack: bool = True,
        slot_wait: float | None = None,
    ) -> None:
        try:
            self.host, self.port, self.prefix = split_http_url(base_url)
        except ValueError as exc:
            raise ValueError(f"upstream {base_url!r}: {exc}") from None
        self._host_header = f"{self.host}:{self.port}".encode()
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self.quickack = quickack  # acknowledge each read at once (see _TCP_QUICKACK)
        self.slot_wait = slot_wait  # longest wait for a free slot (None: no deadline)
        self._idle: collections.deque[tuple[_Conn, float]] = collections.deque()
        self._slots = asyncio.Semaphore(pool_size)
        self._taken = 0
        self._closed = False

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        """Send and wait for the response headers (the body is read from the response).

        Raises ``UpstreamBusy`` when no slot frees up within ``slot_wait``."""
        head = self._head(method, path, body, headers)
        if self.slot_wait is None or not self._slots.locked():
            await self._slots.acquire()
        else:
            try:
                async with asyncio.timeout(self.slot_wait):
                    await self._slots.acquire()
            except TimeoutError:
                raise UpstreamBusy(
                    f"all {self.pool_size} upstream slots busy for {self.slot_wait} s"
                ) from None
        self._taken += 1
        try:
            for attempt in (0, 1):
                conn = await self._acquire()
                conn.transport.write(head + body if body else head)  # type: ignore[union-attr]
                try:
                    while not conn.headers_done:
                        await conn.wait(self.read_timeout)
                except UpstreamError as e:
                    conn.close()
                    # A pooled connection the upstream had already closed: nothing was
                    # answered, so retry once on a fresh connection.
                    if attempt == 0 and conn.reused and not conn.got_bytes:
                        continue
                    if conn.got_bytes:
                        raise UpstreamBroken(str(e)) from e
                    raise
                except BaseException:
                    conn.close()
                    raise
                return _Released(self, conn)
            raise AssertionError("unreachable")
        except BaseException:
            self._slot_done()
            raise

    def _head(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None
    ) -> bytes:
        lines = [
            f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1"),
            b"Host: ",
            self._host_header,
            b"\r\n",
            b"Content-Length: ",
            str(len(body)).encode(),
            b"\r\n",
        ]
        if headers:
            for k, v in headers.items():
                lines.append(f"{k}: {v}\r\n".encode("latin-1"))
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _acquire(self) -> _Conn:
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._idle:
            conn, since = self._idle.pop()
            if conn.closed or now - since > self.keepalive_timeout:
                conn.close()
                continue
            conn._reset()
            conn.parser = httptools.HttpResponseParser(conn)
            conn.reused = True
            return conn
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self.quickack), self.host, self.port
                )
        except TimeoutError:
            raise UpstreamTimeout("upstream connect timed out") from None
        except OSError as e:
            raise UpstreamError(f"cannot connect to upstream: {e}") from e
        return conn

    @property
    def in_use(self) -> int:
        """Slots taken now (requests sent or waiting for their answer to end)."""
        return self._taken

    def _put_back(self, conn: _Conn) -> None:
        if self._closed:
            conn.close()
            return
        self._idle.append((conn, asyncio.get_running_loop().time()))

    def _slot_done(self) -> None:
        self._taken -= 1
        self._slots.release()

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop()[0].close()


class _Released(UpstreamResponse):
    """Frees the pool slot exactly once, however the response ends."""

    def __init__(self, client: UpstreamClient, conn: _Conn) -> None:
        super().__init__(client, conn)
        self._slot = True

    def _free(self) -> None:
        if self._slot:
            self._slot = False
            self._client._slot_done()

    def release(self) -> None:
        super().release()
        self._free()

    def close(self) -> None:
        super().close()
        self._free()
