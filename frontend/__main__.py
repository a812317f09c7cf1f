"""``python -m frontend [--host H] [--port P] [--upstream URL]``: run the gateway on uvloop.

Settings come from ``AKR_GATEWAY_*`` environment variables (``frontend.config``); the flags
override them. SIGTERM/SIGINT drain it: readiness turns 503 "draining", new connections are
taken for the grace period, then answers in flight run to their end (a second signal cuts
them) and pending trace records are flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

import uvloop

from frontend.config import GatewayConfig
from router.envconfig import listening, load_settings

log = logging.getLogger("frontend")


def grace_period_s() -> float:
    """How long the gateway still takes new connections after SIGTERM: the stack's one knob
    for it, Dynamo's ``DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS`` (5 s), which the processor
    and router wait too."""
    raw = os.environ.get("DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS", "5")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise SystemExit(
            f"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS: expected seconds, got {raw!r}"
        ) from None


async def _serve(cfg: GatewayConfig, grace_s: float, address_names: str) -> None:
    from frontend.server import start_server, stop_server, stop_server_now

    with listening("the gateway", cfg.host, cfg.port, address_names):
        gw, server = await start_server(cfg)
    stop, now = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (now if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    log.info("gateway on %s:%d -> %s", cfg.host, cfg.port, cfg.upstream_url)
    try:
        await stop.wait()
    finally:
        log.info("draining: %d connections open, grace %.1f s", len(gw.connections), grace_s)
        drain = asyncio.ensure_future(stop_server(gw, server, grace_s))
        second = asyncio.ensure_future(now.wait())
        await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
        second.cancel()
        if not drain.done():  # a second signal: give the drain up
            log.warning("second signal: closing %d connections now", len(gw.connections))
            stop_server_now(gw, server)
            await drain


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
    flags = {"host": "--host", "port": "--port", "upstream_url": "--upstream"}
    given = {k: flags[k] for k in overrides}
    cfg = load_settings(GatewayConfig, flags=given, **overrides)
    logging.basicConfig(
        level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    address = ", ".join(given.get(k) or f"AKR_GATEWAY_{k.upper()}" for k in ("host", "port"))
    uvloop.run(_serve(cfg, grace_period_s(), address))


if __name__ == "__main__":
    main()
