"""Wiring of the processor component: runtime, registration as the public model, serving.

Run with ``python -m processor``; configuration comes from ``AKR_PROCESSOR_*`` variables and
Dynamo's own ``DYN_*`` variables (discovery backend, request and event planes, bindings).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvloop
from dynamo.common.utils.graceful_shutdown import install_signal_handlers
from dynamo.llm import ModelInput, ModelRuntimeConfig, ModelType, WorkerType, register_model
from dynamo.runtime import DistributedRuntime, dynamo_worker

from processor.config import ProcessorConfig
from processor.handler import ProcessorHandler
from processor.health import WorkerHealth
from router.config import RouterConfig
from router.envconfig import configure_logging, load_settings, parse_no_flags
from router.service import RouterService

logger = logging.getLogger(__name__)


class DrainingEndpoint:
    """The endpoint as Dynamo's shutdown sees it: leaving discovery, its first step on SIGTERM,
    first marks ``/health`` "draining", so probes stop calling this processor ready while it
    waits the grace period and finishes what it holds (Dynamo offers no hook at the signal)."""

    def __init__(self, endpoint: Any, health: WorkerHealth) -> None:
        self._endpoint = endpoint
        self._health = health

    async def unregister_endpoint_instance(self) -> None:
        self._health.draining = True
        await self._endpoint.unregister_endpoint_instance()


async def register_public_model(endpoint: Any, config: ProcessorConfig, handler: Any) -> None:
    """Register ``endpoint`` as the public model, with the workers' block size and context.

    ``ignore_weights``: the stock frontend needs the model's tokenizer, chat template and
    config, never its weights; without it a Hugging Face id in ``AKR_PROCESSOR_MODEL_PATH``
    downloads the whole model before the processor serves."""
    # Our context is the workers' (their cards): the stock frontend lists it, and the gateway
    # checks prompts against it (see processor.engine_state.prompt_limit_tokens).
    runtime_config = ModelRuntimeConfig()
    if handler.prompt_limit is not None:
        runtime_config.context_length = handler.prompt_limit
    await register_model(
        ModelInput.Tokens,
        ModelType.Chat | ModelType.Completions,
        endpoint,
        config.model_path,
        config.model_name,
        worker_type=WorkerType.Aggregated,
        kv_cache_block_size=handler.block_size,
        runtime_config=runtime_config,
        ignore_weights=True,
    )


@dynamo_worker()
async def worker(
    runtime: DistributedRuntime, config: ProcessorConfig, router_config: RouterConfig
) -> None:
    service = RouterService(router_config, block_size=None)  # the workers' size, in start()
    if service.config.state_path and await service.load_state(service.config.state_path):
        logger.info("restored learner state from %s", service.config.state_path)
    handler = ProcessorHandler(runtime, config, service)
    await handler.start()
    endpoint = runtime.endpoint(config.endpoint)
    await register_public_model(endpoint, config, handler)
    logger.info("processor serving %s as model %s", config.endpoint, config.model_name)
    # SIGTERM/SIGINT: leave discovery, wait Dynamo's grace period
    # (DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS, default 5 s), let in-flight requests finish;
    # `handler.stop()` then flushes the trace queue and saves the learner. Without handlers
    # SIGTERM killed the process on the spot and both were lost.
    install_signal_handlers(
        asyncio.get_running_loop(), runtime, [DrainingEndpoint(endpoint, handler.health)]
    )
    try:
        await endpoint.serve_endpoint(handler.generate, graceful_shutdown=True)
    finally:
        await handler.stop()


def main(argv: list[str] | None = None) -> None:
    parse_no_flags("python -m processor", __doc__, "AKR_PROCESSOR_* and AKR_ROUTER_*", argv)
    # Read before the runtime starts: a bad value stops here, naming its variable.
    config = load_settings(ProcessorConfig)
    router_config = load_settings(RouterConfig)
    configure_logging()
    uvloop.run(worker(config, router_config))


if __name__ == "__main__":
    main()
