"""Two ways a processor can forward a request to the worker it chose, probed on a real stack.

    python -m tests.integration.forwarding_probe RECORD_PATH   (in the stack's Dynamo env)

* ``direct``: ``client.direct(request, worker, context=ctx)``, what the processor does, with
  the processor handler's context (here a ``Context`` of our own);
* ``pinned``: ``KvRouter.generate_from_request(request)`` with
  ``routing.backend_instance_id = worker``, the pattern of Dynamo's ThunderAgent router. It
  takes no context.

For each: (1) the client goes away after 3 tokens (the processor stops the context, or drops
the stream when its handler is closed); (2) the worker process is killed after the first
token. Prints one JSON object: per probe, the tokens received, the exception (if any) and the
worker's process id; tests/integration/test_forwarding.py reads the workers' own records to
see whether the request was stopped there and whether another worker took it over.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import uvloop
from dynamo.llm import KvRouter, KvRouterConfig
from dynamo.runtime import Context, DistributedRuntime, dynamo_worker

from deploy.local_stack import WORKER_ENDPOINT, WORKER_MODEL

MAX_TOKENS = 200  # at the worker's token delay, long enough to be cut short


def _request(head: int, worker: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": WORKER_MODEL,
        "token_ids": [head, head + 1, head + 2, head + 3, *range(10, 74)],
        "stop_conditions": {"max_tokens": MAX_TOKENS},
        "sampling_options": {},
        "output_options": {},
        "eos_token_ids": [],
        "annotations": [],
    }
    if worker is not None:
        body["routing"] = {"backend_instance_id": worker}
    return body


def _pid_of(record_path: Path, head: int) -> int:
    for line in record_path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") is None and rec.get("head", [None])[0] == head:
            return int(rec["pid"])
    raise LookupError(f"no worker recorded the request {head}")


async def _stream(kind: str, client: Any, kv: Any, head: int, worker: int, ctx: Any) -> Any:
    if kind == "direct":
        return await client.direct(_request(head), worker, annotated=False, context=ctx)
    return await kv.generate_from_request(_request(head, worker))


async def _cancel(kind: str, client: Any, kv: Any, head: int, worker: int) -> dict[str, Any]:
    """The client leaves after 3 tokens: stop the context (direct) or drop the stream."""
    ctx = Context()
    stream = await _stream(kind, client, kv, head, worker, ctx)
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    if kind == "direct":
        ctx.stop_generating()
    del stream
    gc.collect()
    await asyncio.sleep(2.0)  # at the worker's pace, ~20 more tokens had it kept going
    return {"received": got}


async def _kill(
    kind: str, client: Any, kv: Any, head: int, worker: int, record_path: Path
) -> dict[str, Any]:
    """Kill the worker process after the first token; read on until the stream ends."""
    stream = await _stream(kind, client, kv, head, worker, Context())
    got, error, pid = 0, None, None
    try:
        async for _ in stream:
            got += 1
            if got == 1:
                pid = _pid_of(record_path, head)
                os.kill(pid, signal.SIGKILL)
    except Exception as exc:  # what the processor would see
        error = f"{type(exc).__name__}: {exc}"[:300]
    return {"received": got, "error": error, "pid": pid}


@dynamo_worker()
async def main(runtime: DistributedRuntime) -> None:
    record_path = Path(sys.argv[1])
    endpoint = runtime.endpoint(WORKER_ENDPOINT)
    client = await endpoint.client()
    await client.wait_for_instances()
    deadline = asyncio.get_running_loop().time() + 60
    while len(client.instance_ids()) < 3:
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"{len(client.instance_ids())} of 3 workers up")
        await asyncio.sleep(0.1)
    workers = sorted(client.instance_ids())
    kv = KvRouter(endpoint, 64, KvRouterConfig())
    out: dict[str, Any] = {"workers": workers}
    try:
        out["cancel_direct"] = await _cancel("direct", client, kv, 1000, workers[0])
        out["cancel_pinned"] = await _cancel("pinned", client, kv, 2000, workers[0])
        out["kill_direct"] = await _kill("direct", client, kv, 3000, workers[1], record_path)
        out["kill_pinned"] = await _kill("pinned", client, kv, 4000, workers[2], record_path)
        await asyncio.sleep(1.0)  # a migrated request would have started elsewhere by now
    finally:
        print(json.dumps(out), flush=True)
        runtime.shutdown()


if __name__ == "__main__":
    uvloop.run(main())
