"""Our score against Dynamo's own ``KvRouter.best_worker`` on real mocker workers.

    python -m tests.integration.equivalence_probe   (in the stack's Dynamo env)

Caches are filled by real requests (KV events), load by pinned requests kept in flight through
the same ``KvRouter``; then, per probe prompt, the KvRouter's rows go to a ``RouterService``
configured as Dynamo's default cost (decode_block_weight 1, prefill linear in tokens;
affinity, learner and KV-full term off) and the same prompt to ``best_worker``. Prints one
JSON object: per probe, both choices and our score per worker (to tell ties, which Dynamo
breaks at random).
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import uvloop
from dynamo.llm import KvRouter, KvRouterConfig
from dynamo.runtime import DistributedRuntime, dynamo_worker

from deploy.local_stack import WORKER_ENDPOINT, WORKER_MODEL
from router.config import RouterConfig
from router.policy import RouteRequest
from router.service import FindWorker, RouterService

BLOCK = 64
WORKERS = 4


def _tokens(rng: random.Random, blocks: int) -> list[int]:
    return [rng.randrange(3, 2000) for _ in range(blocks * BLOCK)]


def _request(tokens: list[int], worker: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": WORKER_MODEL,
        "token_ids": tokens,
        "stop_conditions": {"max_tokens": max_tokens},
        "sampling_options": {},
        "output_options": {},
        "eos_token_ids": [],
        "annotations": [],
        "routing": {"backend_instance_id": worker},
    }


async def _run(kv: Any, workers: list[int]) -> list[dict[str, Any]]:
    rng = random.Random(5)
    systems = [_tokens(rng, n) for n in (40, 24, 12)]
    # Caches: system 0 on worker 0 (40 blocks) and its first 12 blocks on worker 2; system 1
    # on worker 1 (24 blocks); system 2 on worker 3 (12 blocks).
    for tokens, w in (
        (systems[0], workers[0]),
        (systems[0][: 12 * BLOCK], workers[2]),
        (systems[1], workers[1]),
        (systems[2], workers[3]),
    ):
        async for _ in await kv.generate_from_request(_request(tokens, w, 1)):
            pass
    await asyncio.sleep(1.0)  # KV events reach the indexer
    # Load: long requests in flight (distinct prompts, never read), a different amount on
    # each worker but worker 0, so that cache and load trade off and ties are rare.
    in_flight = [
        await kv.generate_from_request(_request(_tokens(rng, blocks), w, 4000))
        for w, blocks in ((workers[1], 10), (workers[2], 21), (workers[3], 33))
    ]
    await asyncio.sleep(0.5)
    service = RouterService(
        RouterConfig(
            seed=0,
            decode_block_weight=1.0,
            prefill_chunk_tokens=0,
            affinity_weight=0.0,
            bandit_enabled=False,
            worker_capacity_blocks=10**6,
        ),
        BLOCK,
    )
    probes = []
    for k in range(24):
        system = systems[k % 3]
        cut = rng.choice((len(system), len(system) // 2, BLOCK * 4))
        tokens = system[:cut] + _tokens(rng, rng.randrange(1, 20))
        rows = await kv.get_potential_loads(tokens)
        dynamo_worker_id, _rank, _overlap = await kv.best_worker(tokens)
        decision = service.find_worker(
            FindWorker(
                request=RouteRequest(request_id=f"p{k}", prompt_tokens=len(tokens), osl=1),
                rows=rows,
            ),
            now=float(k),
        )
        service.load.finish(decision.request_id)  # ours stays at Dynamo's view: no own load
        service.router.cancel(decision.request_id)
        probes.append(
            {
                "dynamo": dynamo_worker_id,
                "ours": decision.worker_id,
                "scores": {str(c.worker_id): c.score for c in decision.candidates},
                "rows": rows,
            }
        )
    del in_flight
    return probes


@dynamo_worker()
async def main(runtime: DistributedRuntime) -> None:
    endpoint = runtime.endpoint(WORKER_ENDPOINT)
    client = await endpoint.client()
    await client.wait_for_instances()
    deadline = asyncio.get_running_loop().time() + 60
    while len(client.instance_ids()) < WORKERS:
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"{len(client.instance_ids())} of {WORKERS} workers up")
        await asyncio.sleep(0.1)
    kv = KvRouter(endpoint, BLOCK, KvRouterConfig())
    try:
        probes = await _run(kv, sorted(client.instance_ids()))
        print(json.dumps({"probes": probes}), flush=True)
    finally:
        runtime.shutdown()


if __name__ == "__main__":
    uvloop.run(main())
