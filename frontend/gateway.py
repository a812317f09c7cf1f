"""The gateway's request handling, independent of the HTTP server that carries it.

Why separate: the HTTP server (``frontend.server``, asyncio + httptools) only parses and
writes; this module decides what to answer, and tests drive it without sockets.
``Gateway.handle`` takes the parsed request and returns a ``Reply`` (whole body) or a
``StreamReply`` (SSE relayed chunk by chunk from the upstream; the server writes it with
backpressure and calls ``close()`` at the end, which on an early end closes the upstream
connection so the stock frontend cancels the generation).

Error answers use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400
``invalid_hint`` / ``invalid_json`` / ``context_length_exceeded``, 404 ``model_not_found``, 413
``body_too_large``, 502 ``upstream_unavailable``, 503 (type ``service_unavailable``, with
``Retry-After``; code ``gateway_busy``, ``too_many_connections``, ``no_worker``,
``no_router``, ``router_timeout`` or ``unavailable``), 504 ``upstream_timeout``.

Why the gateway makes the 503: Dynamo 1.6.1's stock frontend keeps the status of a processor's
``HttpError(503, ...)`` but replaces its message (a 503 body, or a 200 stream whose first event
is an error with code 503), and sends no ``Retry-After``. The gateway turns both into a real 503
with ``Retry-After`` before the client saw a 200. The processor's reason (the marker of
``router.unavailable`` in its text) does not come through that frontend (docs/DESIGN.md,
"Retry-later answers"); the reason is then the processor's state from its ``/health``
(no worker, no router, a silent router), else ``unavailable`` (an admission refusal). A
marker is still read where a message carries one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from frontend.config import GatewayConfig
from frontend.health import Readiness, Verdict
from frontend.metrics import GatewayMetrics
from frontend.prompt_limit import prompt_error
from frontend.translate import WORKER_PIN_HEADERS, request_id, translate, upstream_body
from frontend.upstream import (
    UpstreamBroken,
    UpstreamBusy,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)
from router.hints import REQUEST_ID_HEADER, AgentHints, HintError
from router.jsonl_writer import JsonlWriter
from router.loop_lag import watch_loop_lag
from router.unavailable import parse_unavailable

log = logging.getLogger(__name__)

JSON = "application/json"
POST_ROUTES = ("/v1/chat/completions", "/v1/completions")
GET_ROUTES = ("/v1/models", "/health", "/ready", "/live", "/metrics")
PROMPT_FIELDS = {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}
MODEL_REFRESH_S = 10.0  # how often the model list (context windows) is re-read
# The processor's /health statuses that say why it answers "retry later", as the reasons it
# gives (router.unavailable.REASONS).
PROCESSOR_STATES = {
    "no_workers": "no_worker",
    "no_router": "no_router",
    "router_timeout": "router_timeout",
}

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_HINT_FIELDS = AgentHints.__struct_fields__
_LIVE = b'{"status":"live"}'


@dataclass(slots=True)
class Reply:
    """A whole answer."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StreamReply:
    """An SSE answer relayed from the upstream; iterate ``chunks()``, then ``close()``."""

    status: int
    content_type: str
    upstream: UpstreamResponse
    gateway: Gateway
    finish: Any  # callable(status) recording metrics and the trace record
    headers: dict[str, str] = field(default_factory=dict)  # sent with the status line
    complete: bool = False

    async def relay(self, sink: Callable[[bytes], None], *, paused: bool = False) -> None:
        """The body into ``sink`` from the upstream's read callback (``frontend.server``);
        backpressure through ``upstream.pause()``/``resume()`` (``paused``: the client is
        already behind)."""
        try:
            await self.upstream.relay(sink, paused=paused)
        except (UpstreamError, UpstreamTimeout) as e:
            sink(self._broken(e))
        self.complete = True

    def _broken(self, e: UpstreamError | UpstreamTimeout) -> bytes:
        """Count a mid-stream upstream failure; the SSE event that tells the client."""
        if isinstance(e, UpstreamTimeout):
            self.gateway.metrics.upstream_error("timeout")
            return sse_error("upstream timed out mid-stream", "upstream_timeout")
        self.gateway.metrics.upstream_error("read")
        return sse_error("upstream stream broke", "upstream_unavailable")

    def close(self) -> None:
        """No-op after a complete relay; otherwise drops the upstream connection."""
        self.upstream.close()
        self.finish(self.status if self.complete else 499)


def error_reply(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type_: str = "invalid_request_error",
) -> Reply:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Reply(status, _encoder.encode(body))


def sse_error(message: str, code: str) -> bytes:
    err = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"data: " + _encoder.encode(err) + b"\n\n"


def _timeout_reply() -> Reply:
    return error_reply(504, "upstream timed out", type_="upstream_error", code="upstream_timeout")


def service_unavailable(reason: str, retry_after_s: int, message: str) -> Reply:
    """503 with ``Retry-After``: the client should come back later."""
    r = error_reply(503, message, type_="service_unavailable", code=reason)
    r.headers["Retry-After"] = str(retry_after_s)
    return r


def _error_text(payload: bytes) -> str | None:
    """The error message of an error body or of an SSE error event, else None."""
    text = payload.strip()
    if text.startswith(b"data:"):
        text = text[5:].split(b"\n", 1)[0].strip()
    if not text.startswith(b"{"):
        return None
    try:
        doc = _decoder.decode(text)
    except msgspec.DecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    err = doc.get("error", doc)
    if not isinstance(err, dict) or ("message" not in err and "code" not in err):
        return None
    if "error" not in doc and not isinstance(doc.get("code"), int):
        return None
    return f"{err.get('message', '')} code={err.get('code')}"


def _openai_error(status: int, payload: bytes) -> Reply | None:
    """The stock frontend's own error body (``{"message", "type", "code"}``, no ``error``
    object) in the OpenAI shape clients parse, its message kept; None when the body is
    already an OpenAI error or not such a body."""
    try:
        doc = _decoder.decode(payload)
    except msgspec.DecodeError:
        return None
    if not isinstance(doc, dict) or "error" in doc or not isinstance(doc.get("message"), str):
        return None
    if status < 500:
        return error_reply(status, doc["message"], code="rejected_by_frontend")
    return error_reply(status, doc["message"], type_="upstream_error", code="frontend_error")


def _unavailable_reply(e: BaseException) -> Reply:
    return error_reply(
        502, f"upstream unavailable: {e}", type_="upstream_error", code="upstream_unavailable"
    )


class Gateway:
    """Routes, validation, translation, forwarding, metrics and traces of the hint gateway."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self.metrics.start_routes(POST_ROUTES)
        self.client = UpstreamClient(
            config.upstream_url,
            read_timeout=config.upstream_read_timeout_s,
            pool_size=config.upstream_connections,
            slot_wait=config.slot_wait_s,
        )
        self.readiness = Readiness(config, time.monotonic)
        self.metrics.slots_in_use = lambda: self.client.in_use
        self.trace: JsonlWriter | None = None
        self._lag_watch: asyncio.Task[None] | None = None
        self._model_watch: asyncio.Task[None] | None = None
        # Set on SIGTERM (frontend/server.py, stop_server): readiness answers 503 "draining"
        # and every answer closes its connection, while requests in flight run to the end.
        self.draining = False
        self.connections: set[Any] = set()  # open client connections (frontend/server.py)
        self._none_open = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        if self._lag_watch is None:
            loop = asyncio.get_running_loop()
            self._lag_watch = loop.create_task(
                watch_loop_lag(self.metrics.loop_lag.observe, loop.time)
            )
        if self._model_watch is None:
            self._model_watch = asyncio.get_running_loop().create_task(self._watch_models())
        if cfg.trace_path is not None and self.trace is None:
            self.trace = JsonlWriter(cfg.trace_path)
            self.trace.start()

    async def _watch_models(self) -> None:
        """Keep the model list's context windows (prompt and body limits) and the readiness
        gauge current."""
        while True:
            try:
                verdict = await self.readiness.refresh_models()
                self.metrics.ready = verdict.ready and not self.draining
            except Exception:  # a model list nobody foresaw: keep the last limits, try again
                log.exception("model list refresh failed; keeping the last context windows")
            await asyncio.sleep(MODEL_REFRESH_S)

    def opened(self, conn: Any) -> None:
        self.connections.add(conn)
        self._none_open.clear()

    def closed(self, conn: Any) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._none_open.set()

    async def all_closed(self) -> None:
        """Returns once no client connection is open."""
        if self.connections:
            await self._none_open.wait()

    def body_limit(self) -> int:
        """The body size limit now: the setting, else what the largest known context needs."""
        known = max(self.readiness.contexts.values(), default=0)
        return self.config.body_limit(known or None)

    async def close(self) -> None:
        for task in (self._lag_watch, self._model_watch):
            if task is not None:
                task.cancel()
        self._lag_watch = self._model_watch = None
        await self.client.close()
        await self.readiness.close()
        if self.trace is not None:
            await self.trace.close()

    # --- entry points ------------------------------------------------------------------------

    async def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply | StreamReply:
        """One request; ``headers`` must look up case-insensitively or be lower-case."""
        path = path.split("?", 1)[0]
        if path in POST_ROUTES:
            if method != "POST":
                return self._method_not_allowed(path, "POST")
            return await self._proxy_post(path, headers, body)
        if path in GET_ROUTES:
            if method not in ("GET", "HEAD"):
                return self._method_not_allowed(path, "GET")
            if path == "/live":
                return Reply(200, _LIVE)
            if path in ("/health", "/ready"):
                return await self._ready()
            if path == "/metrics":
                return self._metrics()
            return await self._models()
        self.metrics.count_request("other", 404)
        return error_reply(404, f"no route {method} {path[:200]}", code="not_found")

    def too_many_connections(self, path: str | None) -> Reply:
        """503 for a client connection past the server's cap (frontend/server.py), counted;
        ``path`` None: refused before its request was read."""
        if path is not None:
            self.metrics.count_request(_route(path), 503)
        return self._unavailable(
            "too_many_connections",
            self.config.retry_after_s,
            "the gateway holds as many client connections as it can serve; retry later",
        )

    def internal_error(self, path: str) -> Reply:
        """The answer when handling a request raised: 500, counted like every answer."""
        self.metrics.count_request(_route(path), 500)
        return error_reply(
            500, "internal gateway error", type_="server_error", code="internal_error"
        )

    def unparsed(self, path: str, reply: Reply) -> Reply:
        """The HTTP server's own answer to a request it could not parse (400, 431), counted
        like every answer: a flood of malformed requests shows in the request counter."""
        self.metrics.count_request(_route(path), reply.status)
        return reply

    def too_large(self, path: str, headers: Mapping[str, str]) -> Reply:
        """The answer for a body over ``max_body_bytes`` (the server stops reading it):
        counted and traced like every reject, with its request id."""
        reply = error_reply(
            413,
            f"request body exceeds {self.body_limit()} bytes",
            param="body",
            code="body_too_large",
        )
        rid = request_id(headers)
        reply.headers[REQUEST_ID_HEADER] = rid
        return self._reject(path if path in POST_ROUTES else "other", reply, "body", rid)

    def _method_not_allowed(self, path: str, allow: str) -> Reply:
        self.metrics.count_request(path, 405)
        r = error_reply(405, f"use {allow} for {path}", code="method_not_allowed")
        r.headers["Allow"] = allow
        return r

    # --- GET routes --------------------------------------------------------------------------

    async def _ready(self) -> Reply:
        """200 when the stock frontend lists the models and a worker is routable, else 503."""
        if self.draining:  # shutting down: the load balancer should send nothing new here
            self.metrics.ready = False
            return Reply(503, _encoder.encode(Verdict(False, "draining").body()))
        v = await self.readiness.check()
        self.metrics.ready = v.ready
        return Reply(200 if v.ready else 503, _encoder.encode(v.body()))

    def _metrics(self) -> Reply:
        m = self.metrics
        if self.trace is not None:
            m.trace_lost = self.trace.lost
        return Reply(200, generate_latest(m.registry), CONTENT_TYPE_LATEST)

    async def _models(self) -> Reply:
        public = self.config.public_models
        try:
            up = await self.client.request("GET", "/v1/models")
            try:
                payload = await up.read()
            finally:
                up.close()
            if public and up.status == 200:
                payload = _filter_models(payload, public)
            reply = Reply(up.status, payload, up.headers.get("content-type", JSON))
        except UpstreamBusy as e:
            reply = self._unavailable("gateway_busy", self.config.retry_after_s, str(e))
        except UpstreamTimeout:
            reply = _timeout_reply()
        except UpstreamError as e:
            reply = _unavailable_reply(e)
        self.metrics.count_request("/v1/models", reply.status)
        return reply

    # --- POST routes -------------------------------------------------------------------------

    def _reject(self, route: str, reply: Reply, field: str, rid: str) -> Reply:
        self.metrics.reject(field)
        self.metrics.count_request(route, reply.status)
        if self.trace is not None:
            self.trace.put(
                {
                    "ts": time.time(),
                    "request_id": rid,
                    "route": route,
                    "status": reply.status,
                    "reject": field,
                }
            )
        return reply

    async def _proxy_post(
        self, route: str, headers: Mapping[str, str], raw: bytes
    ) -> Reply | StreamReply:
        """Every answer of a completion route carries its request id (``translate.request_id``),
        as does its trace record."""
        rid = request_id(headers)
        reply = await self._forward(route, headers, raw, rid)
        reply.headers[REQUEST_ID_HEADER] = rid
        return reply

    async def _forward(
        self, route: str, headers: Mapping[str, str], raw: bytes, rid: str
    ) -> Reply | StreamReply:
        t0 = time.perf_counter()
        cfg, m = self.config, self.metrics
        try:
            body = _decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError, ValueError) as e:
            return self._reject(
                route,
                error_reply(
                    400, f"request body is not valid JSON: {e}", param="body", code="invalid_json"
                ),
                "body",
                rid,
            )
        if not isinstance(body, dict):
            return self._reject(
                route,
                error_reply(
                    400, "request body must be a JSON object", param="body", code="invalid_json"
                ),
                "body",
                rid,
            )
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            return self._reject(
                route,
                error_reply(400, "model must be a string", param="model", code="invalid_request"),
                "model",
                rid,
            )
        if cfg.public_models and model is not None and model not in cfg.public_models:
            return self._reject(
                route,
                error_reply(
                    404,
                    f"The model `{model[:256]}` does not exist",
                    param="model",
                    code="model_not_found",
                ),
                "model",
                rid,
            )
        ctx = cfg.context_tokens or (self.readiness.contexts.get(model, 0) if model else 0)
        if ctx:
            field_name = PROMPT_FIELDS[route]
            why = prompt_error(field_name, body, ctx, cfg.max_bytes_per_token)
            if why is not None:
                return self._reject(
                    route,
                    error_reply(
                        400,
                        f"{field_name}: {why}",
                        param=field_name,
                        code="context_length_exceeded",
                    ),
                    field_name,
                    rid,
                )
        try:
            tr = translate(body, headers, rid)
            data = upstream_body(tr, raw)
        except HintError as e:
            return self._reject(
                route,
                error_reply(
                    400, f"invalid hint {e.field}: {e.reason}", param=e.field, code="invalid_hint"
                ),
                e.field,
                rid,
            )
        except (msgspec.EncodeError, OverflowError, TypeError, ValueError, RecursionError) as e:
            return self._reject(
                route,
                error_reply(
                    400, f"request body cannot be forwarded: {e}", param="body", code="invalid_json"
                ),
                "body",
                rid,
            )
        hints = tr.hints
        if not hints.is_empty():
            for f in _HINT_FIELDS:
                if getattr(hints, f) is not None:
                    m.count_hint(f)
        for name in WORKER_PIN_HEADERS:
            if name in headers:
                m.dropped_pin_headers += 1

        t_up = time.perf_counter()
        t_headers: float | None = None

        def finish(status: int) -> None:
            m.count_request(route, status)
            if self.trace is not None:
                record = {
                    "ts": time.time(),
                    "request_id": rid,
                    "route": route,
                    "status": status,
                    "latency_ms": (time.perf_counter() - t0) * 1e3,
                    "upstream_ttfb_ms": None if t_headers is None else (t_headers - t0) * 1e3,
                    "hints": msgspec.structs.asdict(hints) if not hints.is_empty() else None,
                }
                self.trace.put(record)

        try:
            up = await self.client.request("POST", route, data, tr.headers)
        except UpstreamBusy as e:
            finish(503)
            return self._unavailable("gateway_busy", cfg.retry_after_s, str(e))
        except UpstreamTimeout:
            m.upstream_error("timeout")
            finish(504)
            return _timeout_reply()
        except UpstreamError as e:
            m.upstream_error("read" if isinstance(e, UpstreamBroken) else "connect")
            finish(502)
            return _unavailable_reply(e)
        except BaseException:  # cancelled: the client went away while we waited
            finish(499)
            raise
        t_headers = time.perf_counter()
        m.observe_upstream(route, t_headers - t_up)
        ctype = up.headers.get("content-type", JSON)
        if ctype.startswith("text/event-stream"):
            # Hold the headers until the first event: an error before any token becomes a 503.
            try:
                first = await up.peek_event()
            except UpstreamTimeout:
                up.close()
                m.upstream_error("timeout")
                finish(504)
                return _timeout_reply()
            except UpstreamError as e:
                up.close()
                m.upstream_error("read")
                finish(502)
                return _unavailable_reply(e)
            except BaseException:
                up.close()
                finish(499)
                raise
            later = self._retry_later(first) if up.status == 200 else None
            if later is None:
                return StreamReply(up.status, ctype, up, self, finish)
            up.close()
            finish(503)
            return await self._retry_later_reply(*later)
        try:
            payload = await up.read()
        except UpstreamTimeout:
            m.upstream_error("timeout")
            finish(504)
            return _timeout_reply()
        except UpstreamError as e:
            m.upstream_error("read")
            finish(502)
            return _unavailable_reply(e)
        except BaseException:
            finish(499)
            raise
        finally:
            up.close()  # no-op after a complete read
        if up.status >= 500:
            later = self._retry_later(payload, up.status)
            if later is not None:
                finish(503)
                return await self._retry_later_reply(*later)
        finish(up.status)
        if up.status >= 400 and (wrapped := _openai_error(up.status, payload)) is not None:
            return Reply(up.status, wrapped.body, wrapped.content_type)
        return Reply(up.status, payload, ctype)

    def _retry_later(self, payload: bytes, status: int = 200) -> tuple[str | None, int] | None:
        """An upstream "retry later" (a 503, or an error, body or first SSE event, carrying the
        processor's marker or code 503): (the marker's reason, else None; Retry-After). None
        for anything else."""
        text = _error_text(payload)
        if text is None:
            return None
        marked = parse_unavailable(text)
        if marked is not None:
            return marked
        if status != 503 and not text.endswith(" code=503"):
            return None
        return None, self.config.retry_after_s

    async def _retry_later_reply(self, reason: str | None, retry_after_s: int) -> Reply:
        """Our 503 for an upstream "retry later". Without the processor's own reason (the stock
        frontend drops its text, docs/DESIGN.md "Retry-later answers"), the state its
        ``/health`` gives at most ``ready_cache_s`` ago: no worker, no router, a silent router.
        A refusal of admission is no state of the processor: it stays ``unavailable``."""
        if reason is None:
            reason = "unavailable"
            if self.readiness.processor is not None:
                await self.readiness.check()
                reason = PROCESSOR_STATES.get(self.readiness.processor_status or "", reason)
        return self._unavailable(reason, retry_after_s, "no capacity, retry later")

    def _unavailable(self, reason: str, retry_after_s: int, message: str) -> Reply:
        self.metrics.count_unavailable(reason)
        return service_unavailable(reason, retry_after_s, message)


def _route(path: str) -> str:
    """The route label of a request path: a known route, else "other"."""
    return path if path in POST_ROUTES or path in GET_ROUTES else "other"


def _filter_models(payload: bytes, public: list[str]) -> bytes:
    """Keep only the public models in an OpenAI model list (unparseable lists pass as is)."""
    try:
        doc = _decoder.decode(payload)
        doc["data"] = [m for m in doc["data"] if isinstance(m, dict) and m.get("id") in public]
        return _encoder.encode(doc)
    except (msgspec.DecodeError, KeyError, TypeError):
        return payload
