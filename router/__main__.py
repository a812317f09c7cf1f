"""Standalone router component: one learner and one load view shared by several processors.

    python -m router        # serves <AKR_ROUTER_SERVICE_ENDPOINT>.find_worker and .feedback

Processors use it when ``AKR_PROCESSOR_ROUTER_ENDPOINT`` names the same ``namespace.component``;
otherwise each processor runs ``RouterService`` in-process (the default, one hop less).
``find_worker`` takes a ``FindWorker`` message (the route request and the caller's KvRouter
rows: O(workers) numbers, no tokens) and answers the ``Decision``; ``feedback`` takes
``Feedback`` messages (first token, finish) and answers nothing. The background task sweeps
expiry and feedback timeouts, forgets workers gone from the processors' rows (no processor
tells it of departures; router/service.py), and snapshots the learner to
``AKR_ROUTER_STATE_PATH``. The KV block size comes with the processors' messages
(router/service.py). With ``AKR_ROUTER_METRICS_PORT`` set it serves Prometheus metrics
(router/metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import uvloop
from dynamo.common.utils.graceful_shutdown import install_signal_handlers
from dynamo.runtime import DistributedRuntime, dynamo_worker

from router.config import RouterConfig
from router.envconfig import configure_logging, listening, load_settings, parse_no_flags
from router.metrics import serve_metrics
from router.service import STATE_SAVE_INTERVAL_S, Feedback, FindWorker, RouterService

logger = logging.getLogger(__name__)


class RouterEndpoints:
    """Dynamo handlers around one ``RouterService``; ``clock`` gives monotonic seconds."""

    def __init__(self, service: RouterService, clock: Callable[[], float]) -> None:
        self.service = service
        self.clock = clock

    async def find_worker(self, request: Any) -> AsyncIterator[Any]:
        msg = msgspec.convert(request, FindWorker)
        decision = self.service.find_worker(msg, self.clock())
        yield msgspec.to_builtins(decision)

    async def feedback(self, request: Any) -> AsyncIterator[Any]:
        self.service.feedback(msgspec.convert(request, Feedback))
        return
        yield  # an async generator that answers nothing

    async def maintain(self) -> None:
        """Sweep every second; snapshot the learner every ``STATE_SAVE_INTERVAL_S``."""
        cfg = self.service.config
        last_save = self.clock()
        while True:
            await asyncio.sleep(1.0)
            try:
                now = self.clock()
                self.service.sweep(now)
                if cfg.state_path and now - last_save >= STATE_SAVE_INTERVAL_S:
                    await self.service.save_state(cfg.state_path)
                    last_save = self.clock()
            except Exception:  # maintenance must go on; one failed pass is logged
                logger.exception("router maintenance failed")


@dynamo_worker()
async def worker(runtime: DistributedRuntime, config: RouterConfig) -> None:
    service = RouterService(config, block_size=None)
    if config.state_path and await service.load_state(config.state_path):
        logger.info("restored learner state from %s", config.state_path)
    endpoints = RouterEndpoints(service, time.monotonic)
    if config.metrics_port is not None:
        names = "AKR_ROUTER_METRICS_HOST, AKR_ROUTER_METRICS_PORT"
        with listening("the router's metrics", config.metrics_host, config.metrics_port, names):
            serve_metrics(service, config.metrics_port, config.metrics_host)
        logger.info(
            "router metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port
        )
    find = runtime.endpoint(f"{config.service_endpoint}.find_worker")
    feedback = runtime.endpoint(f"{config.service_endpoint}.feedback")
    maintenance = asyncio.create_task(endpoints.maintain())
    # SIGTERM/SIGINT (Kubernetes stops pods with SIGTERM): leave discovery, wait Dynamo's grace
    # period (DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS, default 5 s), stop the endpoints; the
    # `finally` below then saves the learner. Without handlers SIGTERM killed the process
    # on the spot and the state since the last periodic snapshot was lost.
    install_signal_handlers(asyncio.get_running_loop(), runtime, [find, feedback])
    logger.info("router serving %s.{find_worker,feedback}", config.service_endpoint)
    try:
        await asyncio.gather(
            find.serve_endpoint(endpoints.find_worker, graceful_shutdown=True),
            feedback.serve_endpoint(endpoints.feedback, graceful_shutdown=True),
        )
    finally:
        maintenance.cancel()
        if config.state_path:
            await service.save_state(config.state_path)


def main(argv: list[str] | None = None) -> None:
    parse_no_flags("python -m router", __doc__, "AKR_ROUTER_*", argv)
    # Read before the runtime starts: a bad value stops here, naming its variable.
    config = load_settings(RouterConfig)
    configure_logging()
    uvloop.run(worker(config))


if __name__ == "__main__":
    main()
