"""Request handler of the processor: pick a worker, forward the token request, stream back."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

from dynamo.runtime import DistributedRuntime

from processor.config import ProcessorConfig

logger = logging.getLogger(__name__)


class ProcessorHandler:
    """Forwards each preprocessed request to one worker chosen round-robin (skeleton)."""

    def __init__(self, runtime: DistributedRuntime, config: ProcessorConfig) -> None:
        self._runtime = runtime
        self._config = config
        self._client: Any = None
        self._turn = itertools.count()

    async def start(self) -> None:
        self._client = await self._runtime.endpoint(self._config.worker_endpoint).client()
        await self._client.wait_for_instances()

    async def stop(self) -> None:
        return None

    async def generate(self, request: dict[str, Any], context: Any) -> AsyncIterator[Any]:
        workers = self._client.instance_ids()
        if not workers:
            workers = await self._client.wait_for_instances()
        worker_id = workers[next(self._turn) % len(workers)]
        stream = await self._client.direct(request, worker_id, context=context)
        async for item in stream:
            yield item.data() if hasattr(item, "data") else item
