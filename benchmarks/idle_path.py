"""What each request path costs with nothing else running: one request at a time, per arm.

    python -m benchmarks.idle_path [--requests 30] [--words 100,2500]

Under load, path cost mixes with queueing; one request at a time shows the fixed price of
each design. Two parts, both on loopback with the stack's own Dynamo settings:

1. Client TTFT per arm (``deploy.local_stack``, 2 mocker workers at speed-up 10, fresh stack
   per arm, arms interleaved twice so drift hits both): ``dynamo_kv`` (stock frontend
   ``--router-mode kv``) and ``ours`` (gateway -> stock frontend -> processor -> workers),
   for a short and a long prompt (a random system prompt of ``words`` words + a fresh 40-word
   question; the tiny model's tokenizer makes ~4 tokens of a word). Streaming, 3 output
   tokens, 50 ms between requests; the first 5 requests of a stack are warm-up.
2. A bare Dynamo request-plane round trip between two Python processes (an endpoint that
   answers one item at once, ``client.direct`` -> end of stream), with 0, 1k, 5k and 10k
   token ids in the request: the floor of any design that puts a Python component between
   the frontend and the workers.

Figures come from simulated workers on this machine (not GPUs). Writes
``benchmarks/results/idle_path.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.path_split import write_results
from benchmarks.routing import MACHINE, code_state
from deploy.local_stack import LocalStack, StackConfig, loopback_env

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = {"dynamo_kv": "kv", "ours": "ours"}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron".split()
WARMUP = 5

_SERVER = r"""
import uvloop
from dynamo.runtime import DistributedRuntime, dynamo_worker

@dynamo_worker()
async def worker(runtime: DistributedRuntime) -> None:
    async def generate(request, context):
        yield {"token_ids": [1]}
    await runtime.endpoint("idle.echo.generate").serve_endpoint(generate)

uvloop.run(worker())
"""

_CLIENT = r"""
import asyncio, json, sys, time, uvloop
from dynamo.runtime import DistributedRuntime, dynamo_worker

@dynamo_worker()
async def worker(runtime: DistributedRuntime) -> None:
    client = await runtime.endpoint("idle.echo.generate").client()
    wid = (await client.wait_for_instances())[0]
    out = {}
    for n in (0, 1000, 5000, 10000):
        request = {"token_ids": list(range(n))}
        times = []
        for i in range(int(sys.argv[1]) + 10):
            t0 = time.perf_counter()
            async for _ in await client.direct(request, wid, annotated=False):
                pass
            times.append((time.perf_counter() - t0) * 1000.0)
            await asyncio.sleep(0.01)
        out[n] = times[10:]
    print(json.dumps(out))

uvloop.run(worker())
"""


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {
        "p50": round(float(np.percentile(a, 50)), 2),
        "p90": round(float(np.percentile(a, 90)), 2),
        "mean": round(float(a.mean()), 2),
    }


def prompt(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def run_arm(arm: str, words: int, requests: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    system = prompt(words, rng)
    ours = arm != "dynamo_kv"
    ttfts: list[float] = []
    with (
        LocalStack(StackConfig(workers=2, speedup=10.0, arm=ARMS[arm])) as stack,
        httpx.Client(timeout=60) as client,
    ):
        url = f"{stack.url}/v1/chat/completions"
        for i in range(requests + WARMUP):
            body: dict[str, Any] = {
                "model": stack.model_name,
                "stream": True,
                "max_tokens": 3,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"question {i} " + prompt(40, rng)},
                ],
            }
            if ours:
                body["nvext"] = {
                    "agent_hints": {"prefix_id": f"idle-{i % 3}", "total_requests": 10, "osl": 3}
                }
            t0 = time.perf_counter()
            ttft = None
            with client.stream("POST", url, json=body) as resp:
                if resp.status_code != 200:
                    raise RuntimeError(f"{arm}: HTTP {resp.status_code} {resp.read()[:200]!r}")
                for line in resp.iter_lines():
                    if ttft is None and line.startswith("data: {"):
                        ttft = (time.perf_counter() - t0) * 1000.0
            if i >= WARMUP and ttft is not None:
                ttfts.append(ttft)
            time.sleep(0.05)
        out: dict[str, Any] = {"arm": arm, "words": words, "ttft_ms": pct(ttfts)}
    return out


def request_plane(requests: int) -> dict[str, dict[str, float]]:
    """Part 2: the bare Python-to-Python round trip, in two processes of one Dynamo domain."""
    with tempfile.TemporaryDirectory(prefix="akr-idle-") as tmp:
        env = {**os.environ, **loopback_env(Path(tmp) / "kv")}
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            done = subprocess.run(
                [sys.executable, "-c", _CLIENT, str(requests)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    times = json.loads(done.stdout.strip().splitlines()[-1])
    return {n: pct(v) for n, v in times.items()}


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Request path cost at idle, per design",
        "",
        f"Machine: {MACHINE}. Command: `{meta['command']}` ({meta['started']}). One request "
        "at a time; times in ms; all figures from simulated workers, not GPUs.",
        "",
        "Client TTFT (p50 / p90), arms interleaved, two rounds:",
        "",
        "| words | arm | round | TTFT p50 | TTFT p90 | vs dynamo_kv p50 |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in result["arms"]:
        base = next(
            r
            for r in result["arms"]
            if r["arm"] == "dynamo_kv" and r["words"] == row["words"] and r["round"] == row["round"]
        )
        lines.append(
            f"| {row['words']} | {row['arm']} | {row['round']} | {row['ttft_ms']['p50']} | "
            f"{row['ttft_ms']['p90']} | "
            f"+{row['ttft_ms']['p50'] - base['ttft_ms']['p50']:.2f} |"
        )
    lines += [
        "",
        "Bare Dynamo request-plane round trip, Python to Python (`client.direct` to the "
        "end of a one-item stream):",
        "",
        "| token ids in the request | p50 | p90 |",
        "|---:|---:|---:|",
    ]
    for n, s in result["request_plane"].items():
        lines.append(f"| {n} | {s['p50']} | {s['p90']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--words", default="100,2500")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "idle_path")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    rows = []
    for words in (int(w) for w in args.words.split(",")):
        for rnd in (1, 2):
            for arm in ARMS:
                row = run_arm(arm, words, args.requests, args.seed)
                row["round"] = rnd
                print(json.dumps(row), flush=True)
                rows.append(row)
    plane = request_plane(args.requests)
    print(json.dumps(plane), flush=True)
    shown = (
        "python -m benchmarks.idle_path"
        + (f" --requests {args.requests}" if args.requests != 30 else "")
        + (f" --words {args.words}" if args.words != "100,2500" else "")
    )
    result = {
        "meta": {
            "command": shown,
            "started": started,
            "machine": MACHINE,
            "code": code_state(),
            "load_after": os.getloadavg(),
        },
        "arms": rows,
        "request_plane": plane,
    }
    print(write_results(args.out, result, markdown(result)))


if __name__ == "__main__":
    main()
