"""The hint gateway: an aiohttp app in front of Dynamo's stock frontend.

Why it exists: the stock 1.6.1 frontend answers NAT's ``nvext.agent_hints.prefix_id`` (and
``total_requests``, ``iat``, ``cache_control``) with HTTP 400. The gateway validates the hints,
rewrites them (``frontend.translate``) and passes the answer back byte for byte: SSE streams
chunk by chunk with the client's backpressure (``await write``), other answers whole. A client
disconnect cancels the handler (aiohttp ``handler_cancellation=True``, set by ``__main__`` and by
aiohttp's test server), which closes the pooled upstream connection, so the stock frontend
cancels the generation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from frontend.config import GatewayConfig
from frontend.metrics import GatewayMetrics
from frontend.translate import WORKER_PIN_HEADERS, translate
from frontend.upstream import UpstreamClient, UpstreamError, UpstreamTimeout
from router.hints import AgentHints, HintError
from router.jsonl_writer import JsonlWriter

log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("config", GatewayConfig)
METRICS_KEY = web.AppKey("metrics", GatewayMetrics)
CLIENT_KEY = web.AppKey("client", UpstreamClient)
TRACE_KEY = web.AppKey("trace", object)  # JsonlWriter | None

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_JSON = "application/json"
_HINT_FIELDS = AgentHints.__struct_fields__


# --- error answers (OpenAI shape) ----------------------------------------------------------


def error_response(status: int, message: str, *, param: str | None = None,
                   code: str | None = None, type_: str = "invalid_request_error"
                   ) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(status=status, body=_encoder.encode(body), content_type=_JSON)


def _sse_error(message: str) -> bytes:
    err = {"error": {"message": message, "type": "upstream_error", "param": None,
                     "code": "upstream_timeout"}}
    return b"data: " + _encoder.encode(err) + b"\n\n"


# --- app lifecycle -------------------------------------------------------------------------


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    """Pooled keep-alive client to the upstream and the optional trace writer."""
    cfg = app[CONFIG_KEY]
    client = UpstreamClient(cfg.upstream_url, pool_size=cfg.pool_size,
                            connect_timeout=cfg.upstream_connect_timeout_s,
                            read_timeout=cfg.upstream_read_timeout_s,
                            keepalive_timeout=cfg.keepalive_timeout_s)
    app[CLIENT_KEY] = client
    writer = None
    if cfg.trace_path is not None:
        writer = JsonlWriter(cfg.trace_path, queue_size=cfg.trace_queue_size,
                             max_bytes=cfg.trace_max_bytes, backups=cfg.trace_backups)
        writer.start()
    app[TRACE_KEY] = writer
    try:
        yield
    finally:
        await client.close()
        if writer is not None:
            await writer.close()


def build_app(config: GatewayConfig | None = None, *,
              metrics: GatewayMetrics | None = None) -> web.Application:
    """The gateway app; serve it with ``handler_cancellation=True`` so disconnects propagate."""
    cfg = config if config is not None else GatewayConfig()
    # aiohttp's own limit is a backstop; the handler answers 413 in the OpenAI shape first.
    app = web.Application(client_max_size=cfg.max_body_bytes)
    app[CONFIG_KEY] = cfg
    app[METRICS_KEY] = metrics if metrics is not None else GatewayMetrics()
    app.cleanup_ctx.append(_client_ctx)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    if cfg.metrics_enabled:
        app.router.add_get("/metrics", _metrics)
    return app


# --- handlers ------------------------------------------------------------------------------


async def _health(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"healthy"}', content_type=_JSON)


async def _metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS_KEY]
    writer = request.app[TRACE_KEY]
    if isinstance(writer, JsonlWriter):
        m.trace_dropped.set(writer.dropped)
    return web.Response(body=generate_latest(m.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _models(request: web.Request) -> web.StreamResponse:
    m = request.app[METRICS_KEY]
    public = request.app[CONFIG_KEY].public_models
    try:
        up = await request.app[CLIENT_KEY].request("GET", "/v1/models")
        payload = await up.read()
        if public and up.status == 200:
            payload = _filter_models(payload, public)
        resp = web.Response(status=up.status, body=payload,
                            headers={"Content-Type": up.headers.get("content-type", _JSON)})
    except UpstreamTimeout:
        resp = _timeout_response()
    except UpstreamError as e:
        resp = _unavailable_response(e)
    m.count_request("/v1/models", resp.status)
    return resp


def _timeout_response() -> web.Response:
    return error_response(504, "upstream timed out", type_="upstream_error",
                          code="upstream_timeout")


def _unavailable_response(e: BaseException) -> web.Response:
    return error_response(502, f"upstream unavailable: {e}", type_="upstream_error",
                          code="upstream_unavailable")


def _filter_models(payload: bytes, public: list[str]) -> bytes:
    """Keep only the public models in an OpenAI model list (unparseable lists pass as is)."""
    try:
        doc = _decoder.decode(payload)
        doc["data"] = [m for m in doc["data"] if isinstance(m, dict) and m.get("id") in public]
        return _encoder.encode(doc)
    except (msgspec.DecodeError, KeyError, TypeError):
        return payload


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _proxy_post(request, "/v1/chat/completions")


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _proxy_post(request, "/v1/completions")


async def _read_body(request: web.Request, limit: int) -> bytes | web.Response:
    if request.content_length is not None and request.content_length > limit:
        return error_response(413, f"request body exceeds {limit} bytes", param="body",
                              code="body_too_large")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, f"request body exceeds {limit} bytes", param="body",
                              code="body_too_large")


def _decode(raw: bytes) -> dict[str, Any] | web.Response:
    try:
        body = _decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError, ValueError) as e:
        return error_response(400, f"request body is not valid JSON: {e}", param="body",
                              code="invalid_json")
    if not isinstance(body, dict):
        return error_response(400, "request body must be a JSON object", param="body",
                              code="invalid_json")
    return body


async def _proxy_post(request: web.Request, route: str) -> web.StreamResponse:
    t0 = time.perf_counter()
    app = request.app
    cfg, m = app[CONFIG_KEY], app[METRICS_KEY]
    trace: JsonlWriter | None = app[TRACE_KEY]  # type: ignore[assignment]

    raw = await _read_body(request, cfg.max_body_bytes)
    if isinstance(raw, web.Response):
        m.rejects.labels("body").inc()
        m.count_request(route, raw.status)
        return raw
    body = _decode(raw)
    if isinstance(body, web.Response):
        m.rejects.labels("body").inc()
        m.count_request(route, body.status)
        return body
    model = body.get("model")
    if cfg.public_models and isinstance(model, str) and model not in cfg.public_models:
        m.rejects.labels("model").inc()
        m.count_request(route, 404)
        return error_response(404, f"The model `{model[:256]}` does not exist", param="model",
                              code="model_not_found")
    try:
        tr = translate(body, request.headers,
                       allow_worker_pin_headers=cfg.allow_worker_pin_headers)
        data = _encoder.encode(tr.body) if tr.changed else raw
    except HintError as e:
        m.rejects.labels(e.field).inc()
        m.count_request(route, 400)
        if trace is not None:
            trace.put({"ts": time.time(), "route": route, "status": 400, "reject": e.field})
        return error_response(400, f"invalid hint {e.field}: {e.reason}", param=e.field,
                              code="invalid_hint")
    except (msgspec.EncodeError, OverflowError, TypeError, ValueError, RecursionError) as e:
        m.rejects.labels("body").inc()
        m.count_request(route, 400)
        return error_response(400, f"request body cannot be forwarded: {e}", param="body",
                              code="invalid_json")
    hints = tr.hints
    if not hints.is_empty():
        for f in _HINT_FIELDS:
            if getattr(hints, f) is not None:
                m.count_hint(f)
    if not cfg.allow_worker_pin_headers:
        for name in WORKER_PIN_HEADERS:
            if name in request.headers:
                m.dropped_headers.inc()

    m.in_flight.inc()
    status = 0
    t_headers = None
    try:
        resp, status, t_headers = await _forward(request, app[CLIENT_KEY], data, tr.headers,
                                                 route, m)
        return resp
    finally:
        m.in_flight.dec()
        m.count_request(route, status or 499)
        if trace is not None:
            t1 = time.perf_counter()
            trace.put({
                "ts": time.time(), "route": route, "status": status or 499,
                "latency_ms": (t1 - t0) * 1e3,
                "upstream_ttfb_ms": None if t_headers is None else (t_headers - t0) * 1e3,
                "hints": msgspec.structs.asdict(hints) if not hints.is_empty() else None,
            })


async def _forward(request: web.Request, client: UpstreamClient, data: bytes,
                   headers: dict[str, str], route: str, m: GatewayMetrics
                   ) -> tuple[web.StreamResponse, int, float | None]:
    """Send upstream and relay the answer; returns (response, status, time of headers)."""
    t0 = time.perf_counter()
    try:
        up = await client.request("POST", route, data, headers)
    except UpstreamTimeout:
        m.upstream_errors.labels("timeout").inc()
        return _timeout_response(), 504, None
    except UpstreamError as e:
        m.upstream_errors.labels("connect").inc()
        return _unavailable_response(e), 502, None
    t_headers = time.perf_counter()
    m.upstream_latency.labels(route).observe(t_headers - t0)
    try:
        ctype = up.headers.get("content-type", _JSON)
        if not ctype.startswith("text/event-stream"):
            try:
                payload = await up.read()
            except UpstreamTimeout:
                m.upstream_errors.labels("timeout").inc()
                return _timeout_response(), 504, t_headers
            except UpstreamError as e:
                m.upstream_errors.labels("read").inc()
                return _unavailable_response(e), 502, t_headers
            return web.Response(status=up.status, body=payload,
                                headers={"Content-Type": ctype}), up.status, t_headers
        resp = web.StreamResponse(status=up.status, headers={
            "Content-Type": ctype, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            await resp.prepare(request)
            try:
                async for chunk in up.iter_chunks():
                    await resp.write(chunk)  # awaits drain: the client's pace bounds our buffer
            except UpstreamTimeout:
                m.upstream_errors.labels("timeout").inc()
                await resp.write(_sse_error("upstream timed out mid-stream"))
            except UpstreamError:
                m.upstream_errors.labels("read").inc()
                await resp.write(_sse_error("upstream stream broke"))
            await resp.write_eof()
        except ConnectionResetError:  # the client went away mid-stream (finally closes upstream)
            return resp, 499, t_headers
        return resp, up.status, t_headers
    finally:
        # No-op after a complete read; otherwise (client gone, cancelled, upstream broken)
        # closing the connection makes the stock frontend cancel the generation.
        up.close()
