"""A gateway process of this checkout in front of a stand-in upstream: for tests of what only
a whole process shows (signals, descriptor limits)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

REPO = Path(__file__).resolve().parents[2]


async def spawn_gateway(
    upstream_url: str, port: int, extra_env: dict[str, str] | None = None, **popen: Any
) -> asyncio.subprocess.Process:
    """``python -m frontend`` on 127.0.0.1:``port`` relaying to ``upstream_url``; ``popen``
    goes to ``create_subprocess_exec`` (stderr, preexec_fn ...)."""
    env = {
        **os.environ,
        "AKR_GATEWAY_HOST": "127.0.0.1",
        "AKR_GATEWAY_PORT": str(port),
        "AKR_GATEWAY_UPSTREAM_URL": upstream_url.rstrip("/"),
        "AKR_GATEWAY_CONTEXT_TOKENS": "4096",
        **(extra_env or {}),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "frontend", cwd=REPO, env=env, **popen
    )


async def stand_in_upstream(
    chat: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> TestServer:
    """A started stand-in for the stock frontend: model ``tiny`` listed, ``chat`` answering
    ``/v1/chat/completions``."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "tiny"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server
