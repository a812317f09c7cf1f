"""A test engine that shows what the workers receive, for checks the mocker cannot make.

A real Dynamo worker (discovery, request plane, model card, cancellation), started by
``LocalStack`` in place of ``dynamo.mocker`` with the same flags
(``StackConfig(worker_module="tests.integration.recording_worker")``). It answers every
request with ``max_tokens`` tokens and appends, per request, the fields the engines' Dynamo
handlers read (``agent_context``: ``dynamo.sglang`` hands its ``session_id`` to SGLang's
session-aware radix cache, ``dynamo.vllm`` to vLLM's ``generate(session_id=...)``,
``dynamo.trtllm`` to its conversation affinity; ``routing``; ``annotations``) as a JSON line
to ``$AKR_TEST_RECORD_PATH``. Why: the mocker does not show its requests, and whether a
client's conversation id and priority reach the engine is only known end to end.

With ``$AKR_TEST_TOKEN_DELAY_S`` it streams slowly, stops when its request context is stopped
(as engines do), and appends a second line when a request ends: how many tokens it sent and
whether it was stopped, with its process id and the first prompt tokens (to tell requests and
workers apart). tests/integration/test_forwarding.py reads those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiofiles
import uvloop
from dynamo.llm import ModelInput, ModelType, WorkerType, register_model
from dynamo.runtime import DistributedRuntime, dynamo_worker

RECORDED = ("agent_context", "routing", "annotations")


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--block-size", type=int, default=64)
    args, _mocker_only = ap.parse_known_args()  # speed-up, KV blocks, planes: not needed here
    return args


@dynamo_worker()
async def worker(runtime: DistributedRuntime) -> None:
    args = _args()
    record_path = os.environ["AKR_TEST_RECORD_PATH"]
    endpoint = runtime.endpoint(args.endpoint.removeprefix("dyn://"))

    delay_s = float(os.environ.get("AKR_TEST_TOKEN_DELAY_S", "0"))

    async def record(fields: dict[str, Any]) -> None:
        async with aiofiles.open(record_path, "a") as out:
            await out.write(json.dumps(fields) + "\n")

    async def generate(request: dict[str, Any], context: Any) -> AsyncIterator[dict[str, Any]]:
        head = (request.get("token_ids") or [])[:4]
        await record({k: request.get(k) for k in RECORDED} | {"pid": os.getpid(), "head": head})
        prompt = len(request.get("token_ids") or [])
        n = max(1, int((request.get("stop_conditions") or {}).get("max_tokens") or 1))
        sent, stopped = 0, False
        try:
            for i in range(n):
                if delay_s:
                    await asyncio.sleep(delay_s)
                    if context.is_stopped() or context.is_killed():
                        stopped = True
                        return
                item: dict[str, Any] = {"token_ids": [ord("a") + i % 26]}
                if i == n - 1:
                    item["finish_reason"] = "length"
                    item["completion_usage"] = {
                        "prompt_tokens": prompt,
                        "completion_tokens": n,
                        "total_tokens": prompt + n,
                        "prompt_tokens_details": {"cached_tokens": 0},
                    }
                yield item
                sent += 1
        finally:
            if delay_s:
                end = {"event": "end", "pid": os.getpid(), "head": head, "sent": sent}
                await record(end | {"stopped": stopped or context.is_stopped()})

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
