"""``python -m frontend [--host H] [--port P] [--upstream URL]``: run the gateway on uvloop.

Settings come from ``AKR_GATEWAY_*`` environment variables (``frontend.config``); the flags
override them. SIGTERM/SIGINT stop it cleanly (pending trace records are flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import uvloop

from frontend.config import GatewayConfig

log = logging.getLogger("frontend")


async def _serve(cfg: GatewayConfig) -> None:
    from frontend.server import start_server, stop_server

    gw, server = await start_server(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("gateway on %s:%d -> %s", cfg.host, cfg.port, cfg.upstream_url)
    try:
        await stop.wait()
    finally:
        await stop_server(gw, server)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m frontend", description=__doc__)
    parser.add_argument("--host", help="listen address (AKR_GATEWAY_HOST)")
    parser.add_argument("--port", type=int, help="listen port (AKR_GATEWAY_PORT)")
    parser.add_argument("--upstream", help="stock frontend base URL (AKR_GATEWAY_UPSTREAM_URL)")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("upstream_url", args.upstream))
        if v is not None
    }
    cfg = GatewayConfig(**overrides)
    logging.basicConfig(
        level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvloop.run(_serve(cfg))


if __name__ == "__main__":
    main()
