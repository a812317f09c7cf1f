"""The deployed HTTP/1.1 server of the gateway: asyncio protocol + httptools (llhttp) parser.

Why not aiohttp's web server: on the 2-core VM here it cost ~380 us of CPU per request against
~90 us for a protocol on httptools (the parser uvicorn uses), and the gateway's target is to add
at most 0.5 ms at p50. The server does only what the gateway needs, defensively:

* strict parsing by llhttp; a malformed request gets 400 and the connection is closed;
* limits: URL 8 KiB, header block 64 KiB and 128 fields (431), body ``max_body_bytes`` (413,
  answered as soon as Content-Length or the received bytes exceed it, then the connection closes);
* ``Expect: 100-continue`` answered; HTTP/1.0 and ``Connection: close`` honoured;
* pipelined requests are answered in order, at most 8 queued before reading pauses;
* request-read timeout (slow senders) and keep-alive idle timeout close the connection;
* responses: whole bodies in one write; SSE relayed with chunked encoding, each chunk written
  from the upstream's read callback as it arrives (no task switch per token) and the upstream
  not read while the client's output buffer is over ``client_buffer_bytes``;
* slow readers: a client that acknowledges no byte of its pending output for
  ``stall_timeout_s`` (its receive window stays shut) is disconnected and counted; that closes
  its upstream stream and frees its upstream slot;
* a client disconnect cancels the request's task, which closes the upstream connection, so the
  stock frontend cancels the generation;
* client connections are capped from RLIMIT_NOFILE, its soft limit first raised to the hard
  one (``raise_fd_limit``, ``connection_cap``): each may need an upstream connection too, so
  past half the descriptors left a new connection gets 503 with ``Retry-After`` and is
  closed, counted as ``too_many_connections``; a few past the cap are still read, so health
  probes and scrapes are answered when clients hold all the others.

Duplicate request header fields are joined with ", " (RFC 9110), so two different values of a
hint header fail validation instead of one silently winning.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
import resource
import socket
import struct
import termios
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus

import httptools

from frontend.config import GatewayConfig
from frontend.gateway import Gateway, Reply, StreamReply, error_reply

log = logging.getLogger(__name__)

_OUTQ = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ on a Linux socket: bytes not yet acked


def _kernel_unacked(fd: int) -> int:
    """Bytes in the socket's send queue the peer has not acknowledged (0 where unknown)."""
    if _OUTQ is None or fd < 0:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(fd, _OUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0


# Checks of a client's acknowledgements per stall timeout: a client is dropped between one
# stall timeout and 1 + 1/STALL_CHECKS of it after its last acknowledgement (one check per
# timeout let a dead reader hold its stream for up to two timeouts).
STALL_CHECKS = 4

MAX_URL = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 128
MAX_PIPELINED = 8

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_date_cache: tuple[int, bytes] = (0, b"")


def _discard_received(fd: int, max_reads: int = 16) -> None:
    """Drop what a client has sent so far (at most ``max_reads`` x 64 KiB), without
    blocking: only on a non-blocking socket, as the event loop's are."""
    if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
        return
    try:
        for _ in range(max_reads):
            if not os.read(fd, 65536):
                return
    except OSError:  # BlockingIOError: nothing more for now
        pass


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


class _Request:
    __slots__ = (
        "body",
        "error",
        "fields",
        "header_bytes",
        "headers",
        "headers_done",
        "http10",
        "keep_alive",
        "method",
        "size",
        "too_large",
        "url",
    )

    def __init__(self) -> None:
        self.method = ""
        self.url = b""
        self.headers: dict[str, str] = {}
        self.headers_done = False  # later fields are a chunked body's trailers
        self.body: list[bytes] = []
        self.size = 0
        self.keep_alive = True
        self.http10 = False
        self.header_bytes = 0
        self.fields = 0  # header fields received; repeated names join into one dict entry
        self.too_large = False
        self.error: Reply | None = None


REQUEST_READ_TIMEOUT_S = 60.0  # a client must send a whole request within this time
CLIENT_KEEPALIVE_TIMEOUT_S = 75.0  # idle client keep-alive connections are closed after this
# Descriptors the gateway may open after start besides client and upstream sockets: readiness
# probes (two pools of two), the trace file and its rotation, name lookups, the socket of a
# connection being refused.
FD_HEADROOM = 32
# Connections past the cap that are still read: a liveness probe must not fail because clients
# hold every connection (a restart would drop them all). Only the local routes are answered
# on them, each answer closes them, and their request must come within PROBE_WAIT_S.
PROBE_CONNECTIONS = 8
PROBE_WAIT_S = 2.0
LOCAL_ROUTES = frozenset({"/live", "/ready", "/health", "/metrics"})


def connection_cap(soft_limit: int, open_fds: int) -> int | None:
    """Client connections the gateway serves at once; None: no limit (RLIM_INFINITY).

    Why: each connection may hold an upstream connection too (its requests are answered one
    at a time). Without a cap, clients took every descriptor and each accepted request failed
    with 502 "Too many open files" connecting upstream (tests/unit/test_gateway_fd_limit.py).
    So half of what is left after the descriptors open at start, ``FD_HEADROOM`` and the
    ``PROBE_CONNECTIONS``."""
    if soft_limit == resource.RLIM_INFINITY:
        return None
    return max(1, (soft_limit - open_fds - FD_HEADROOM - PROBE_CONNECTIONS) // 2)


FD_SOFT_MAX = 1 << 20  # the most descriptors the gateway asks for when the hard limit allows


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at most ``FD_SOFT_MAX``) and return it.

    Why: a shell's usual soft limit of 1024 caps the gateway at ~480 client connections while
    the hard limit, which any process may raise its soft limit to, is often 512k or more. The
    gateway uses epoll and starts no children, so a high limit costs nothing (Go's runtime and
    nginx's ``worker_rlimit_nofile`` do the same). An operator's lower hard limit still rules."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FD_SOFT_MAX if hard == resource.RLIM_INFINITY else min(hard, FD_SOFT_MAX)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as e:  # a sandbox may refuse: keep the soft limit
            log.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, want, e)
    return soft


def fd_budget() -> tuple[int, int]:
    """The soft RLIMIT_NOFILE, raised to the hard one, and the descriptors open now
    (blocking: call from a thread)."""
    soft = raise_fd_limit()
    try:
        open_fds = len(os.listdir("/proc/self/fd"))
    except OSError:  # no procfs: the headroom alone
        open_fds = 0
    return soft, open_fds


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        request_timeout: float = REQUEST_READ_TIMEOUT_S,
        keepalive_timeout: float = CLIENT_KEEPALIVE_TIMEOUT_S,
        max_connections: int | None = None,
    ) -> None:
        self.gw = gateway
        self.max_connections = max_connections
        self.probe_only = False  # past the cap: local routes answered, anything else 503
        self.max_body = gateway.body_limit()
        self.request_timeout = request_timeout
        self.keepalive_timeout = keepalive_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.cur: _Request | None = None
        self.queue: collections.deque[_Request] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.paused_reading = False
        self.writable: asyncio.Future[None] | None = None
        self.relaying: StreamReply | None = None  # the SSE answer being relayed, if any
        self.timer: asyncio.TimerHandle | None = None
        self.stall: asyncio.TimerHandle | None = None  # armed while relaying or output pends
        self.sent = 0  # bytes handed to the transport
        self.acked = 0  # of those, bytes the client had acknowledged at the last stall check
        self.acked_at = 0.0  # loop time of the last check that found more acknowledged
        self.fd = -1  # the client socket, for the kernel's count of unacknowledged bytes
        self.discarding = False  # after an early answer: read and drop, then close
        self.loop = asyncio.get_running_loop()

    # -- connection --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self._admit():
            self._refuse()
            return
        self.gw.opened(self)
        high = self.gw.config.client_buffer_bytes
        self.transport.set_write_buffer_limits(high=high, low=high // 4)  # type: ignore[union-attr]
        # The kernel's share too: autotuned, a send buffer held a whole 1500-token answer
        # (338 KB) for a client that read nothing, so nothing here ever saw it stall.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, high)
            except OSError:
                pass
        self._arm(self.keepalive_timeout)

    def _admit(self) -> bool:
        """Whether to take this connection: under the cap, or on one of the probe slots past
        it (then only local routes are answered, each answer closes it, and its request must
        come within ``PROBE_WAIT_S``)."""
        cap, open_now = self.max_connections, len(self.gw.connections)
        if cap is None or open_now < cap:
            return True
        if open_now >= cap + PROBE_CONNECTIONS:
            return False
        self.probe_only = True
        self.request_timeout = self.keepalive_timeout = PROBE_WAIT_S
        return True

    def _refuse(self) -> None:
        """Past the connection cap: 503 with Retry-After, then close at once. Not read on
        as ``_answer_early`` does: its descriptor is what an admitted connection needs for
        its upstream. What the client has already sent is dropped first, so the close is a
        FIN after the answer, not a reset that can destroy it."""
        self.closed = True
        reply = self.gw.too_many_connections(None)
        head = self._head(reply.status, reply.content_type, len(reply.body), False, reply.headers)
        assert self.transport is not None
        self.transport.write(head + reply.body)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            _discard_received(sock.fileno())
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gw.closed(self)
        self._disarm()
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None
        if self.task is not None and not self.task.done():
            self.task.cancel()  # propagates to the upstream request
        if self.writable is not None and not self.writable.done():
            self.writable.set_exception(ConnectionResetError("client went away"))
            self.writable.exception()  # seen here: nobody may be waiting for it

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()
        if self.relaying is not None:
            self.relaying.upstream.pause()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        if self.relaying is not None:
            self.relaying.upstream.resume()

    def _unacked(self) -> int:
        """Output the client has not acknowledged: ours, and what the kernel holds unacked."""
        t = self.transport
        assert t is not None
        return t.get_write_buffer_size() + _kernel_unacked(self.fd)

    def _write(self, data: bytes) -> None:
        """Write to the client; a relayed answer, or output the kernel did not take, starts
        the stall watch (STALL_CHECKS checks per stall timeout, none per write)."""
        t = self.transport
        assert t is not None
        t.write(data)
        self.sent += len(data)
        if self.stall is None and (self.relaying is not None or t.get_write_buffer_size()):
            self._acked_now(self._unacked())

    def _acked_now(self, pending: int) -> None:
        """Note what the client has acknowledged at this moment, then watch."""
        self.acked = self.sent - pending
        self.acked_at = self.loop.time()
        self._watch()

    def _watch(self) -> None:
        self.stall = self.loop.call_later(
            self.gw.config.stall_timeout_s / STALL_CHECKS, self._stalled
        )

    def _stalled(self) -> None:
        """One check of the stall watch: a client that acknowledged none of its pending output
        for the stall timeout is dropped (what it has not read is lost anyway), which cancels
        its request and frees the upstream slot; otherwise watch again.

        Why the client's acknowledgements and not our buffer: a client that stopped reading
        shuts its receive window as soon as its own buffer is full, while our buffer and the
        kernel's fill at the answer's pace, 10 s or more at a model's; until then the answer is
        generated and relayed for nobody, on the worker, the processor and the frontend."""
        self.stall = None
        t = self.transport
        if self.closed or t is None:
            return
        pending = self._unacked()
        if not pending or self.sent - pending > self.acked:  # progress: not a dead reader
            if pending or self.relaying is not None:
                self._acked_now(pending)
            return
        if self.loop.time() - self.acked_at < self.gw.config.stall_timeout_s:
            self._watch()
            return
        self.gw.metrics.stalled_clients += 1
        log.info("client stalled for %.1f s, disconnected", self.gw.config.stall_timeout_s)
        self.closed = True
        self.transport.abort()  # close() would wait to flush a buffer nobody reads

    async def _drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("client went away")
        w = self.writable
        if w is not None and not w.done():
            await w

    def _finish_connection(self) -> None:
        """Half-close after the last answer; the client's close (or 2 s) ends it."""
        t = self.transport
        self.queue.clear()
        if t is None or self.closed:
            return
        self.discarding = True
        if self.paused_reading:
            self.paused_reading = False
            t.resume_reading()
        if t.can_write_eof():
            t.write_eof()
            self.loop.call_later(2.0, self._close)
        else:
            self._close()

    def close_if_idle(self) -> None:
        """At shutdown: close a connection with no request begun, queued or being answered;
        a busy one closes after its answers (``Connection: close`` while draining)."""
        if self.task is None and not self.queue and self.cur is None:
            self._close()

    def _close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()  # flushes what the client has not read yet, then closes
            self._abort_if_stuck(None)

    def _abort_if_stuck(self, before: int | None) -> None:
        """While a closing connection flushes, drop it only when the client took nothing for
        a stall timeout (``before``: the bytes left at the last look), as on a live one: a
        slow reader gets the end of its answer, a client that never reads is dropped."""
        t = self.transport
        left = t.get_write_buffer_size() if t is not None else 0
        if not left:
            return
        if before is not None and left >= before:
            t.abort()
            return
        self.loop.call_later(self.gw.config.stall_timeout_s, self._abort_if_stuck, left)

    def _arm(self, delay: float) -> None:
        """The idle keep-alive clock: closes the connection quietly when it runs out."""
        self._disarm()
        self.timer = self.loop.call_later(delay, self._close)

    def _arm_request(self) -> None:
        """The clock of a request begun: a client that does not finish it in time gets 408."""
        self._disarm()
        self.timer = self.loop.call_later(self.request_timeout, self._request_timed_out)

    def _request_timed_out(self) -> None:
        """Answered (after any answers still queued, then the connection closes) and counted
        like every answer, so a client trickling its request learns why it was cut off."""
        self.timer = None
        if self.cur is None or self.closed:
            self._close()
            return
        self._fatal(
            error_reply(408, "request not received within the read timeout", code="request_timeout")
        )

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- parsing -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request itself was complete and is answered as plain HTTP; no protocol
            # switch happens, so the connection ends after it.
            if self.queue:
                self.queue[-1].keep_alive = False
            self.discarding = True
        except httptools.HttpParserError as e:
            self._fatal(error_reply(400, f"malformed HTTP request: {e}", code="bad_request"))

    def _fatal(self, reply: Reply) -> None:
        """Answer a request we cannot parse further, then close."""
        req = self.cur or _Request()
        self.cur = None
        req.error = req.error or reply
        self._answer_early(req)

    def _answer_early(self, req: _Request) -> None:
        """Answer before the request was read to its end; drop what else arrives, then close.

        Reading on (rather than closing at once) lets the client receive the answer: closing
        a socket with unread data makes the kernel send a reset that can destroy it.
        """
        req.keep_alive = False
        self.discarding = True
        self._enqueue(req)

    def on_message_begin(self) -> None:
        self.cur = _Request()
        if not self.paused_reading:  # else its clock starts when reading resumes
            self._arm_request()

    def on_url(self, url: bytes) -> None:
        req = self.cur
        assert req is not None
        req.url += url
        if len(req.url) > MAX_URL:
            raise httptools.HttpParserError("URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.cur
        assert req is not None
        req.header_bytes += len(name) + len(value) + 4
        req.fields += 1
        if req.header_bytes > MAX_HEADER_BYTES or req.fields > MAX_HEADERS:
            req.error = error_reply(
                431, "request header fields too large", code="headers_too_large"
            )
            raise httptools.HttpParserError("headers too large")
        if req.headers_done:
            # A trailer: never merged into the header section (RFC 9110 6.5.1), or a client
            # passed hints, Authorization or a session header that a proxy in front, which
            # checks headers but not trailers, never saw.
            return
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        old = req.headers.get(key)
        req.headers[key] = val if old is None else f"{old}, {val}"

    def on_headers_complete(self) -> None:
        req = self.cur
        assert req is not None
        p = self.parser
        req.headers_done = True
        req.method = p.get_method().decode("latin-1")
        req.keep_alive = p.should_keep_alive()
        req.http10 = p.get_http_version() == "1.0"
        cl = req.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > self.max_body:
            req.too_large = True
            req.keep_alive = False
        elif (
            req.headers.get("expect", "").lower() == "100-continue"
            and not req.http10
            and self.task is None  # an earlier answer still being written: no interim line
            and not self.queue  # before it (the client sends its body after a wait anyway)
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        if req.too_large:
            self.cur = None
            self._answer_early(req)  # the body is not read

    def on_body(self, body: bytes) -> None:
        req = self.cur
        if req is None:
            return
        req.size += len(body)
        if req.size > self.max_body:
            req.too_large = True
            req.body.clear()
            self.cur = None
            self._answer_early(req)
            return
        req.body.append(body)

    def on_message_complete(self) -> None:
        req, self.cur = self.cur, None
        if req is None:  # answered early (too large)
            return
        self._disarm()
        self._enqueue(req)

    # -- answering ---------------------------------------------------------------------------
    def _enqueue(self, req: _Request) -> None:
        if self.closed:
            return
        self.queue.append(req)
        if len(self.queue) >= MAX_PIPELINED and not self.paused_reading:
            self._pause_reading()
        if self.task is None:
            self._disarm()
            self.task = self.loop.create_task(self._serve_queue())

    def _pause_reading(self) -> None:
        """Stop reading while enough requests wait. The request-read clock stops too: a
        client cannot finish a request we do not read, and the timeout closing the
        connection then cut the answers still queued on it."""
        self.transport.pause_reading()  # type: ignore[union-attr]
        self.paused_reading = True
        self._disarm()

    def _resume_reading(self) -> None:
        self.paused_reading = False
        self.transport.resume_reading()  # type: ignore[union-attr]
        if self.cur is not None:  # a request begun before or during the pause
            self._arm_request()

    async def _serve_queue(self) -> None:
        try:
            while self.queue and not self.closed:
                req = self.queue.popleft()
                keep = await self._answer(req)
                if not keep or self.gw.draining:  # an answer begun before the drain: now
                    self._finish_connection()
                    return
                if self.paused_reading and len(self.queue) < MAX_PIPELINED // 2:
                    self._resume_reading()
        except (asyncio.CancelledError, ConnectionResetError):
            self._close()
        finally:
            self.task = None
            if not self.closed and self.cur is None and not self.discarding:
                self._arm(self.keepalive_timeout)

    async def _answer(self, req: _Request) -> bool:
        """Write one response; returns whether the connection stays open."""
        path = req.url.decode("latin-1")
        if req.error is not None:
            reply: Reply | StreamReply = self.gw.unparsed(path.split("?", 1)[0], req.error)
        elif req.too_large:
            reply = self.gw.too_large(path.split("?", 1)[0], req.headers)
        elif self.probe_only and path.split("?", 1)[0] not in LOCAL_ROUTES:
            reply = self.gw.too_many_connections(path.split("?", 1)[0])
        else:
            body = b"".join(req.body) if len(req.body) != 1 else req.body[0]
            try:
                reply = await self.gw.handle(req.method, path, req.headers, body)
            except (asyncio.CancelledError, ConnectionResetError):
                raise
            except Exception:
                log.exception("gateway failed on %s %s", req.method, path[:200])
                reply = self.gw.internal_error(path.split("?", 1)[0])
                req.keep_alive = False
        keep = req.keep_alive and not self.gw.draining and not self.probe_only
        head_only = req.method == "HEAD"
        t = self.transport
        assert t is not None
        if isinstance(reply, Reply):
            self._write(
                self._head(reply.status, reply.content_type, len(reply.body), keep, reply.headers)
                + (b"" if head_only else reply.body)
            )
            await self._drain()
            return keep
        chunked = not req.http10
        keep = keep and chunked
        try:
            self._write(
                self._head(
                    reply.status,
                    reply.content_type,
                    None,
                    keep,
                    {"Cache-Control": "no-cache", **reply.headers},
                    chunked=chunked,
                )
            )
            if not head_only:
                # Each upstream chunk is written from the upstream's read callback; while the
                # client's socket buffer is full the upstream is not read (pause_writing).
                self.relaying = reply
                full = self.writable is not None and not self.writable.done()
                await reply.relay(self._sink(t, chunked), paused=full)
                if chunked:
                    self._write(b"0\r\n\r\n")
            await self._drain()
        finally:
            self.relaying = None
            reply.close()
        return keep

    def _sink(self, t: asyncio.Transport, chunked: bool) -> Callable[[bytes], None]:
        """Writes one relayed chunk to the client (chunked framing unless HTTP/1.0)."""

        def write(chunk: bytes) -> None:
            if chunk and not self.closed:
                self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)

        return write

    @staticmethod
    def _head(
        status: int,
        ctype: str,
        length: int | None,
        keep: bool,
        extra: dict[str, str],
        *,
        chunked: bool = False,
    ) -> bytes:
        parts = [
            b"HTTP/1.1 %d %b\r\nDate: %b\r\nContent-Type: %b\r\n"
            % (status, _REASONS.get(status, "").encode(), _date(), ctype.encode("latin-1"))
        ]
        if length is not None:
            parts.append(b"Content-Length: %d\r\n" % length)
        elif chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if not keep:
            parts.append(b"Connection: close\r\n")
        for k, v in extra.items():
            parts.append(f"{k}: {v}\r\n".encode("latin-1"))
        parts.append(b"\r\n")
        return b"".join(parts)


async def start_server(
    config: GatewayConfig,
    gateway: Gateway | None = None,
    *,
    request_timeout: float = REQUEST_READ_TIMEOUT_S,
) -> tuple[Gateway, asyncio.Server]:
    """Start the gateway on ``config.host``/``config.port`` (0 = any free port);
    ``request_timeout``: how long a client may take to send a whole request."""
    gw = gateway if gateway is not None else Gateway(config)
    await gw.start()
    loop = asyncio.get_running_loop()
    cap = connection_cap(*await asyncio.to_thread(fd_budget))
    if cap is not None:
        log.info("client connections capped at %d (RLIMIT_NOFILE)", cap)
    server = await loop.create_server(
        lambda: HttpProtocol(gw, request_timeout=request_timeout, max_connections=cap),
        config.host,
        config.port,
        backlog=1024,
        reuse_address=True,
    )
    return gw, server


async def stop_server(gw: Gateway, server: asyncio.Server, grace_s: float = 0.0) -> None:
    """Stop without cutting an answer: readiness says "draining" at once and every answer
    closes its connection; new connections are still taken for ``grace_s`` (the time a load
    balancer needs to stop sending here), then the listener closes, idle connections close,
    and requests in flight run to their end. Only then is the gateway closed."""
    gw.draining = True
    if grace_s > 0:
        await asyncio.sleep(grace_s)
    server.close()
    for conn in list(gw.connections):
        conn.close_if_idle()
    await gw.all_closed()
    await gw.close()


def stop_server_now(gw: Gateway, server: asyncio.Server) -> None:
    """A second signal: drop every connection at once (the drain is given up)."""
    server.close()
    for conn in list(gw.connections):
        if conn.transport is not None:
            conn.transport.abort()
