"""aiohttp adapter of the gateway: ``build_app(config) -> web.Application``.

Why keep it next to the deployed server (``frontend.server``): it embeds the gateway in any
aiohttp application and serves as a reference implementation; the tests run both. It costs
about three times the CPU per request of ``frontend.server`` on the 2-core VM here, which is
why ``python -m frontend`` uses the latter unless ``AKR_GATEWAY_SERVER=aiohttp``. Serve it with
``handler_cancellation=True`` so a client disconnect cancels the handler and closes the
upstream connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from frontend.config import GatewayConfig
from frontend.gateway import Gateway, Reply
from frontend.metrics import GatewayMetrics

GATEWAY_KEY = web.AppKey("gateway", Gateway)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY_KEY]
    await gw.start()
    try:
        yield
    finally:
        await gw.close()


async def _handle(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY_KEY]
    limit = gw.config.max_body_bytes
    body = b""
    if request.method == "POST":
        if request.content_length is not None and request.content_length > limit:
            return _whole(gw.too_large(request.path))
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _whole(gw.too_large(request.path))
    reply = await gw.handle(request.method, request.path_qs, request.headers, body)
    if isinstance(reply, Reply):
        return _whole(reply)
    resp = web.StreamResponse(
        status=reply.status,
        headers={"Content-Type": reply.content_type, "Cache-Control": "no-cache", **reply.headers},
    )
    try:
        await resp.prepare(request)
        async for chunk in reply.chunks():
            await resp.write(chunk)  # awaits drain: the client's pace bounds our buffer
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away; close() drops the upstream connection
    finally:
        reply.close()
    return resp


def _whole(reply: Reply) -> web.Response:
    return web.Response(
        status=reply.status,
        body=reply.body,
        headers={"Content-Type": reply.content_type, **reply.headers},
    )


def build_app(
    config: GatewayConfig | None = None, *, metrics: GatewayMetrics | None = None
) -> web.Application:
    """The gateway as an aiohttp application."""
    cfg = config if config is not None else GatewayConfig()
    # aiohttp's own limit is a backstop; the handler answers 413 in the OpenAI shape first.
    app = web.Application(client_max_size=cfg.max_body_bytes)
    app[GATEWAY_KEY] = Gateway(cfg, metrics)
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app
