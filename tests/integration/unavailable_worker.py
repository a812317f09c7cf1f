"""A test engine that fails the way the processor does when no worker can take a request, to
show what the stock frontend makes of it and what the gateway answers.

Started by ``LocalStack`` in place of ``dynamo.mocker`` with the same flags
(``StackConfig(arm="round-robin", worker_module="tests.integration.unavailable_worker")``).
``$AKR_TEST_TOKENS_BEFORE_ERROR`` tokens are streamed first (default 0: fail before any token).
``$AKR_TEST_RAISE``: ``http`` (default) raises ``dynamo.llm.exceptions.HttpError(503, text)``
with the ``router.unavailable`` marker in its text; ``plain`` raises ``Unavailable`` itself.
What 1.6.1's frontend does with each (checked): the status of an ``HttpError`` survives (503
body; streamed, a 200 whose error event has code 503), its text does not; any other exception
becomes a 500 "Internal server error".
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from typing import Any

import uvloop
from dynamo.llm import ModelInput, ModelType, WorkerType, register_model
from dynamo.llm.exceptions import HttpError
from dynamo.runtime import DistributedRuntime, dynamo_worker

from router.unavailable import Unavailable


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--block-size", type=int, default=64)
    args, _mocker_only = ap.parse_known_args()
    return args


@dynamo_worker()
async def worker(runtime: DistributedRuntime) -> None:
    args = _args()
    endpoint = runtime.endpoint(args.endpoint.removeprefix("dyn://"))
    before = int(os.environ.get("AKR_TEST_TOKENS_BEFORE_ERROR", "0"))
    plain = os.environ.get("AKR_TEST_RAISE", "http") == "plain"

    async def generate(request: dict[str, Any], context: Any) -> AsyncIterator[dict[str, Any]]:
        for i in range(before):
            yield {"token_ids": [ord("a") + i % 26]}
        exc = Unavailable("no_worker", 2, "no routable worker")
        if plain:
            raise exc
        raise HttpError(503, str(exc))

    await register_model(
        ModelInput.Tokens,
        ModelType.Chat | ModelType.Completions,
        endpoint,
        args.model_path,
        args.model_name,
        worker_type=WorkerType.Aggregated,
        kv_cache_block_size=args.block_size,
    )
    await endpoint.serve_endpoint(generate)


if __name__ == "__main__":
    uvloop.run(worker())
