"""What 300 requests arriving at once cost a normal request, whether or not their clients read.

    python -m benchmarks.arrival_burst [--runs 3] [--clients 300] [--arms none,short,cut,long]

The slow-reader check (``python -m benchmarks.chaos --only slow_readers``) opens 300 streams
that are never read and measures normal requests meanwhile. This runs the same stack and the
same probe (non-streamed, ``max_tokens`` 8, 5 req/s for 15 s) after the same 300 arrivals,
sent by clients that *do* read, in three arms per run:

* ``none``: no burst, the probe alone (the machine's floor);
* ``short``: 300 streamed requests of 8 tokens, read to the end (the arrival alone);
* ``cut``: 300 streamed requests of 1500 tokens whose clients hang up at their first content
  chunk (the earliest any handling of a non-reader could stop its answer: until then a client
  that will never read looks like one that will);
* ``long``: 300 streamed requests of 1500 tokens, read to the end (arrival plus relaying as
  many tokens as the non-readers are sent before the gateway drops them, and more).

If ``cut`` already costs the probe's p99 what the non-readers do, the slow-reader figure is
the cost of the arrival on this machine, which no handling of non-readers can remove. Figures
are from simulated workers on 2 shared cores; compare arms within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp

from benchmarks.chaos import Outcome, chat_body, open_loop, percentile, request, stack_of
from benchmarks.chaos_clients import slow_reader_stack_config
from benchmarks.gateway_overhead import cpu_by_process, cpu_since

PROBE_RATE, PROBE_S = 5.0, 15.0
ARMS = {"none": 0, "short": 8, "cut": 1500, "long": 1500}
CUT = "cut"


async def hang_up_at_first_token(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout_s: float
) -> Outcome:
    """A streamed request whose client closes the connection at its first content chunk."""
    out = Outcome(sent=time.monotonic())
    try:
        async with session.post(
            f"{url}/v1/chat/completions", json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            out.status = resp.status
            async for line in resp.content:
                if line.startswith(b"data:") and b'"content"' in line:
                    out.first_token = time.monotonic()
                    out.finish = "client_closed"
                    break
            resp.close()  # drops the connection: the gateway sees the client leave
            if out.finish is None:
                out.error = "stream ended before its first token"
    except (TimeoutError, aiohttp.ClientError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
    out.ended = time.monotonic()
    return out


async def _arm(arm: str, max_tokens: int, clients: int) -> dict[str, Any]:
    with stack_of(slow_reader_stack_config()) as stack:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=clients + 64)
        ) as session:
            cpu_before = cpu_by_process(stack.procs)
            burst: list[asyncio.Task] = []
            if max_tokens:
                body = chat_body(
                    stack.model_name, "write a very long report " * 10, max_tokens, True
                )
                send = hang_up_at_first_token if arm == CUT else request
                burst = [
                    asyncio.create_task(send(session, stack.url, body, timeout_s=300))
                    for _ in range(clients)
                ]
                await asyncio.sleep(0)  # the burst's requests leave before the probe starts

            def make(i: int) -> Any:
                body = chat_body(stack.model_name, f"normal {i}", 8, False)
                return request(session, stack.url, body, timeout_s=60)

            t0 = time.monotonic()
            probe = await open_loop(make, PROBE_RATE, PROBE_S)
            done = await asyncio.gather(*burst)
            burst_s = time.monotonic() - t0
            cpu_s = cpu_since(stack.procs, cpu_before)
    latencies = [(o.ended - o.sent) * 1000 for o in probe]
    return {
        "normal_p99_ms": round(percentile(latencies, 99), 1),
        "normal_p50_ms": round(percentile(latencies, 50), 1),
        "normal_ok": sum(o.ok for o in probe),
        "normal": len(probe),
        "burst_ok": sum(o.ok for o in done),
        "burst_done_s": round(burst_s, 1) if burst else None,
        "cpu_s": cpu_s,  # each process, from the burst's start to its last answer
    }


async def run(runs: int, clients: int, arms: list[str]) -> list[dict[str, Any]]:
    rows = []
    for r in range(runs):
        for arm in arms:
            row = {"run": r + 1, "arm": arm, **await _arm(arm, ARMS[arm], clients)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument(
        "--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}"
    )
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown {', '.join(unknown)}")
    asyncio.run(run(args.runs, args.clients, arms))


if __name__ == "__main__":
    main()
