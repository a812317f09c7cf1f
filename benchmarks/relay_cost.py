"""What relaying a streamed answer costs the processor, per token, at rising concurrency.

    python -m benchmarks.relay_cost [--concurrency 8,64,256] [--requests 256] [--max-tokens 300]
                                    [--processor-env NAME=VALUE ...] [--out PATH]

One stack (stock frontend -> processor -> 2 simulated workers; no gateway, so the figure is the
processor's alone). For each concurrency, ``--requests`` streamed requests are kept that many at
a time against the frontend and read to the end. Reported per level: the processor's CPU time
(user + system, from ``/proc``) per generated token, the SSE chunks the client received per
request (fewer than ``max_tokens`` when the processor merged outputs that queued up,
processor/relay.py), the worker outputs merged (``akr_processor_outputs_merged_total``; absent
on code without the relay), and the client's time per request. Simulated workers on this
machine's shared cores: compare levels and checkouts within one run of the machine. Writes
``benchmarks/results/relay_cost.json`` (the rows, the command, the processor's extra env).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.chaos import MACHINE, RESULTS, Samples, has_metric, metric, scrape
from benchmarks.gateway_overhead import cpu_seconds
from deploy.local_stack import PUBLIC_MODEL, LocalStack, StackConfig


async def streamed(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    """One streamed chat request read to its end: the SSE chunks that carried content."""
    chunks = 0
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for raw in resp.content:
            if raw.startswith(b"data:") and b'"content"' in raw:
                chunks += 1
    return chunks


def merged_outputs(samples: Samples) -> float | None:
    """The processor's merged-output counter; None on code that has none."""
    name = "akr_processor_outputs_merged_total"
    return metric(samples, name) if has_metric(samples, name) else None


async def _level(
    stack: LocalStack, pid: int, concurrency: int, requests: int, max_tokens: int
) -> dict[str, Any]:
    url = stack.frontend_url
    chunks: list[int] = []
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            body = {
                "model": PUBLIC_MODEL,
                "messages": [{"role": "user", "content": f"relay cost {concurrency} {i}"}],
                "max_tokens": max_tokens,
                "stream": True,
            }
            async with gate:
                chunks.append(await streamed(session, url, body))

        before = await scrape(session, stack.processor_metrics_url)
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        cpu1, t1 = cpu_seconds(pid), time.perf_counter()
        after = await scrape(session, stack.processor_metrics_url)
    m0, m1 = merged_outputs(before), merged_outputs(after)
    tokens = requests * max_tokens
    return {
        "concurrency": concurrency,
        "requests": requests,
        "cpu_us_per_token": round((cpu1 - cpu0) / tokens * 1e6, 2),
        "chunks_per_request": round(sum(chunks) / max(len(chunks), 1), 1),
        "outputs_merged": None if m0 is None or m1 is None else m1 - m0,
        "wall_s": round(t1 - t0, 2),
        "ms_per_request": round((t1 - t0) * 1000 * concurrency / requests, 1),
    }


async def run(
    levels: list[int], requests: int, max_tokens: int, processor_env: dict[str, str]
) -> list[dict[str, Any]]:
    config = StackConfig(workers=2, speedup=10.0, gpu_blocks=8192, processor_env=processor_env)
    with LocalStack(config) as stack:
        pid = next(p.pid for p in stack.procs if p.name == "processor")
        return [await _level(stack, pid, c, requests, max_tokens) for c in levels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="8,64,256")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument(
        "--processor-env", action="append", default=[], help="NAME=VALUE for the processor"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "relay_cost.json")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    env = dict(kv.split("=", 1) for kv in args.processor_env)
    rows = asyncio.run(run(levels, args.requests, args.max_tokens, env))
    for row in rows:
        print(json.dumps(row))
    report = {
        "machine": MACHINE,
        "command": " ".join(["python -m benchmarks.relay_cost", *sys.argv[1:]]),
        "processor_env": env,
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
