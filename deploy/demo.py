"""`make demo`: a local stack on simulated workers, a short agentic workload, a routing report.

Starts the full path (gateway -> stock frontend -> processor + router -> 4 mocker workers),
runs a few agent conversations concurrently through the gateway with NAT-style hints
(``nvext.agent_hints`` + ``nvext.cache_control``) and a context that grows by a tool result
every turn, then prints one line per turn (worker, TTFT, cached tokens, decision reason) from
the processor's trace and a summary, and stops every process it started. It ends with a
replay of an agentic pressure trace at 8 workers, ours against Dynamo kv (benchmarks/replay).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections import Counter, defaultdict
from itertools import pairwise

import httpx

from benchmarks.replay.demo import demo_table
from deploy.local_stack import LocalStack, StackConfig
from processor.traces import read_records

SYSTEM_PROMPT = (
    "You are a research agent. Use the tools search, read_file and python to answer. "
    "Think step by step, call one tool per turn, and cite the tool result you used. "
) * 12


async def conversation(
    client: httpx.AsyncClient, url: str, model: str, name: str, turns: int, rng: random.Random
) -> None:
    """One agent session: each turn appends the previous answer and a tool result."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Task {name}: find the cache settings of worker {name}."},
    ]
    for turn in range(turns):
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": 24,
            "nvext": {
                "agent_hints": {
                    "prefix_id": name,
                    "total_requests": turns,
                    "iat": 250,
                    "osl": 24,
                    "latency_sensitivity": 1.0,
                    "priority": 1,
                },
                "cache_control": {"type": "ephemeral", "ttl": "30s"},
            },
        }
        resp = await client.post(f"{url}/v1/chat/completions", json=body)
        resp.raise_for_status()
        answer = resp.json()["choices"][0]["message"]["content"]
        tool = " ".join(
            rng.choice(["rows", "cache", "block", "value", "json", "key"]) for _ in range(60)
        )
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"tool result {turn}: {tool}"},
        ]
        await asyncio.sleep(rng.uniform(0.05, 0.25))  # the tool call


async def workload(stack: LocalStack, sessions: int, turns: int) -> float:
    rng = random.Random(7)
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(
            *(
                conversation(
                    client,
                    stack.url,
                    stack.model_name,
                    f"agent-{i}",
                    turns,
                    random.Random(rng.random()),
                )
                for i in range(sessions)
            )
        )
    return time.perf_counter() - start


async def wait_for_traces(stack: LocalStack, expected: int, timeout_s: float = 10.0) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(read_records(stack.trace_path)) if stack.trace_path.exists() else []
        if len(records) >= expected or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.1)


def report(records: list, elapsed: float, sent: int) -> None:
    """Print the per-turn table and the summary of the ``sent`` requests' trace records; a
    request without a record is said so, not silently left out of the figures."""
    records = [r for r in records if r.prefix_id]  # skip the launcher's readiness probe
    by_session: dict[str, list] = defaultdict(list)
    for rec in sorted(records, key=lambda r: r.ts):
        by_session[rec.prefix_id].append(rec)
    workers = sorted({r.worker_id for r in records if r.worker_id is not None})
    label = {w: f"w{i}" for i, w in enumerate(workers)}
    print("\nper turn (simulated workers on this machine; times are not GPU times)")
    print(
        f"{'session':<10}{'turn':>5}{'worker':>8}{'reason':>13}{'prompt':>8}{'cached':>8}"
        f"{'ttft ms':>9}"
    )
    for session, recs in sorted(by_session.items()):
        for turn, rec in enumerate(recs):
            print(
                f"{session:<10}{turn:>5}{label.get(rec.worker_id, '-'):>8}{rec.reason or '-':>13}"
                f"{rec.prompt_tokens:>8}{rec.cached_tokens or 0:>8}{rec.ttft_ms or 0:>9.1f}"
            )
    ttfts = sorted(r.ttft_ms for r in records if r.ttft_ms is not None)
    prompt = sum(r.prompt_tokens for r in records)
    cached = sum(r.cached_tokens or 0 for r in records)
    later = [r for recs in by_session.values() for r in recs[1:]]
    stayed = sum(
        1 for recs in by_session.values() for a, b in pairwise(recs) if a.worker_id == b.worker_id
    )
    print("\nsummary")
    failed = sum(1 for r in records if r.error)
    print(f"  requests            {len(records)} in {elapsed:.1f} s, failed {failed}")
    if len(records) < sent:
        print(
            f"  missing             {sent - len(records)} of {sent} requests have no trace "
            "record; the figures leave them out (akr_processor_trace_records_dropped_total "
            "counts lost records)"
        )
    if ttfts:
        p90 = ttfts[int(0.9 * (len(ttfts) - 1))]
        print(
            f"  TTFT ms             p50 {statistics.median(ttfts):.1f}  p90 {p90:.1f}"
            f"  max {ttfts[-1]:.1f}"
        )
    print(
        f"  KV hit ratio        {cached / max(prompt, 1):.2f} "
        f"({cached} of {prompt} prompt tokens cached)"
    )
    print(
        f"  turns on same worker {stayed}/{len(later)} (later turns that stayed with their cache)"
    )
    per_worker = Counter(label[r.worker_id] for r in records if r.worker_id is not None)
    print(f"  requests per worker {dict(sorted(per_worker.items()))}")
    print(f"  decisions by reason {dict(Counter(r.reason for r in records))}")


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m deploy.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    config = StackConfig(workers=4, speedup=5.0, gpu_blocks=2048)
    print(
        "starting: 4 simulated workers (dynamo.mocker), processor + router, stock frontend, gateway"
    )
    with LocalStack(config) as stack:
        print(
            f"stack ready: gateway {stack.gateway_url}, frontend {stack.frontend_url}, "
            f"metrics {stack.processor_metrics_url}"
        )
        sessions, turns = 6, 5
        print(f"running {sessions} agent sessions x {turns} turns through the gateway ...")
        elapsed = asyncio.run(workload(stack, sessions, turns))
        records = asyncio.run(wait_for_traces(stack, sessions * turns + 1))
        report(records, elapsed, sessions * turns)
    print("stack stopped")
    # The same question at cluster scale, where it matters: KV pressure, sessions paused in
    # tool calls, 8 workers. A virtual-clock replay of the engines (benchmarks/replay).
    print("\nreplay: ours against Dynamo kv under KV pressure (simulated engines, virtual clock)")
    print(demo_table())


if __name__ == "__main__":
    main()
