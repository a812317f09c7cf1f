"""Decision micro-benchmark: one full routing decision of ours vs Dynamo's ``best_worker``.

    python -m benchmarks.decision                      # 4, 16, 64, 256 workers
    python -m benchmarks.decision --workers 64 --samples 500

For each worker count it starts one ``dynamo.mocker --num-workers N`` process and a stock
frontend on loopback (``deploy.local_stack``, its own ``DYN_FILE_KV``), then runs the
measurement in a child process whose Dynamo runtime reads that stack's environment:

* one ``KvRouter(workers.backend.generate, 64, KvRouterConfig())``, exactly as the processor
  creates it, shared by both sides;
* a few real 1-token requests first, so that the workers' KV events populate the indexer:
  two ~3k-token "system prompts", each cached on a quarter of the workers;
* then pairs of samples on the same prompt (a system prompt + a fresh 1k-token suffix,
  4k tokens in all), in alternating order (AB, BA, AB, ...) so drift and noise from other
  processes hit both sides equally:
  - ours: ``processor.routing.LocalRouting.decide``: one ``get_potential_loads`` call, then
    ``RouterService.find_worker`` (signals from the rows + our load, ``Router.decide``,
    load accounting), i.e. what
    the processor times as one decision;
  - Dynamo: ``await kv_router.best_worker(token_ids)`` (query-only, no request id).

Outside the timed sections our decisions get synthetic latency feedback (so the bandit's
posterior is not the prior) and half of the workers carry synthetic in-flight load in our
tracker (so the load path is exercised). Results: ``benchmarks/results/decision.json`` and
``decision.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
DEFAULT_WORKERS = (4, 16, 64, 256)
LABEL_TEMPLATE = "simulated workers (dynamo.mocker) on a {cores}-core machine"
PROMPT_TOKENS = 4096
SYSTEM_TOKENS = 3072
BLOCK_SIZE = 64


# ----------------------------------------------------------------------------- child side
async def _measure(runtime: Any, n_workers: int, samples: int, warmup: int, seed: int) -> dict:
    from dynamo.llm import KvRouter, KvRouterConfig

    from deploy.local_stack import WORKER_ENDPOINT, WORKER_MODEL
    from router.config import RouterConfig
    from router.policy import RouteRequest
    from router.service import Feedback, FindWorker, RouterService

    rng = np.random.default_rng(seed)
    endpoint = runtime.endpoint(WORKER_ENDPOINT)
    client = await endpoint.client()
    await client.wait_for_instances()
    deadline = time.monotonic() + 120
    while len(client.instance_ids()) < n_workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(client.instance_ids())}/{n_workers} workers up")
        await asyncio.sleep(0.1)
    worker_ids = sorted(client.instance_ids())
    kv = KvRouter(endpoint, BLOCK_SIZE, KvRouterConfig())

    def tokens(n: int) -> list[int]:
        return rng.integers(3, 2000, n).tolist()

    probe = tokens(PROMPT_TOKENS)
    while len({r["worker_id"] for r in await kv.get_potential_loads(probe)}) < n_workers:
        if time.monotonic() > deadline:
            raise RuntimeError("KvRouter does not see every worker")
        await asyncio.sleep(0.1)

    # Real requests so KV events fill the indexer: system prompt s on a quarter of the workers.
    systems = [tokens(SYSTEM_TOKENS), tokens(SYSTEM_TOKENS)]
    quarter = max(1, n_workers // 4)
    holders = [worker_ids[:quarter], worker_ids[quarter : 2 * quarter] or worker_ids[-1:]]

    async def send(token_ids: list[int], worker_id: int) -> None:
        try:
            stream = await kv.generate(
                token_ids, WORKER_MODEL, stop_conditions={"max_tokens": 1}, worker_id=worker_id
            )
            async for _ in stream:
                pass
        except Exception as exc:  # e.g. not yet known to the KvRouter: sent again below
            print(f"[decision] seed request to {worker_id:x} failed: {exc}", file=sys.stderr)

    # Wait until the events are visible: the holders report their system prompt as cached.
    # A worker whose event subscription was not connected yet when it published (ZMQ drops
    # until then) gets the request again.
    async def cached_on(s: list[int]) -> set[int]:
        rows = await kv.get_potential_loads(s + tokens(PROMPT_TOKENS - SYSTEM_TOKENS))
        return {r["worker_id"] for r in rows if r["potential_prefill_tokens"] < PROMPT_TOKENS}

    missing = [set(ws) for ws in holders]
    for _ in range(10):
        before = sum(map(len, missing))
        for s, ws in zip(systems, missing, strict=True):
            todo = sorted(ws)
            for i in range(0, len(todo), 16):
                await asyncio.gather(*(send(s + tokens(256), w) for w in todo[i : i + 16]))
        for _ in range(30):
            await asyncio.sleep(0.1)
            missing = [ws - await cached_on(s) for s, ws in zip(systems, missing, strict=True)]
            if not any(missing):
                break
        if not any(missing) or sum(map(len, missing)) == before:
            break
    # With 256 workers in one mocker process the KvRouter sometimes never observes a few
    # workers' event sources ("kv_event_source_not_observed"): measure anyway (both sides
    # query the same indexer) and record how many holders are visible.
    visible = [len(ws) - len(m) for ws, m in zip(holders, missing, strict=True)]
    if not all(visible):
        raise RuntimeError(f"no KV events visible for a system prompt: {visible}")
    if any(missing):
        print(
            f"[decision] KV events visible for {visible} of {list(map(len, holders))} "
            "holders; measuring anyway",
            file=sys.stderr,
        )

    # Our side, set up as in processor/handler.py.
    cfg = RouterConfig(seed=seed)
    service = RouterService(cfg, BLOCK_SIZE)
    for i, w in enumerate(worker_ids[::2]):  # synthetic in-flight load on half the workers
        service.load.start(
            f"inflight-{i}", w, 512 * (i % 3), PROMPT_TOKENS, 128, now=time.monotonic()
        )
    live = frozenset(client.instance_ids())
    conversations = 32
    split: list[tuple[float, float]] = []  # (signals, decide) of each of our decisions

    async def ours(k: int, token_ids: list[int]) -> float:
        route = RouteRequest(
            request_id=f"bench-{k}",
            prefix_id=f"conv-{k % conversations}",
            prompt_tokens=len(token_ids),
            total_requests=8,
            osl=128,
        )
        # The body of processor.routing.LocalRouting.decide, timed in its two parts.
        t0 = time.perf_counter()
        rows = await kv.get_potential_loads(token_ids)
        t1 = time.perf_counter()
        decision = service.find_worker(
            FindWorker(request=route, rows=rows, live=list(live)), time.monotonic()
        )
        t2 = time.perf_counter()
        dt = t2 - t0
        split.append((t1 - t0, t2 - t1))
        # Feedback outside the timed section: a plausible TTFT/ITL for the chosen worker.
        top = decision.candidates[0]
        service.feedback(
            Feedback(
                event="finish",
                request_id=route.request_id,
                ttft_ms=20.0 + 0.02 * top.uncached_tokens + float(rng.exponential(5.0)),
                itl_ms=5.0 + float(rng.exponential(0.5)),
                uncached_tokens=int(top.uncached_tokens),
                output_tokens=128,
            )
        )
        return dt

    async def dynamo(token_ids: list[int]) -> float:
        t0 = time.perf_counter()
        await kv.best_worker(token_ids)
        return time.perf_counter() - t0

    async def loads_only(token_ids: list[int]) -> float:
        t0 = time.perf_counter()
        await kv.get_potential_loads(token_ids)
        return time.perf_counter() - t0

    if os.environ.get("AKR_BENCH_PROFILE"):
        import cProfile

        prof = cProfile.Profile()
        for k in range(samples):
            token_ids = systems[k % 2] + tokens(PROMPT_TOKENS - SYSTEM_TOKENS)
            prof.enable()
            await ours(k, token_ids)
            prof.disable()
        prof.dump_stats(os.environ["AKR_BENCH_PROFILE"])

    gc_pauses: list[float] = []  # garbage-collector pauses during the measured loop (s)
    gc_start = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            gc_pauses.append(time.perf_counter() - gc_start[0])

    ours_s: list[float] = []
    dyn_s: list[float] = []
    gpl_s: list[float] = []
    for k in range(warmup + samples):
        if k == warmup:
            gc.callbacks.append(on_gc)
        token_ids = systems[k % 2] + tokens(PROMPT_TOKENS - SYSTEM_TOKENS)
        if k % 2 == 0:
            a = await ours(k, token_ids)
            b = await dynamo(token_ids)
        else:
            b = await dynamo(token_ids)
            a = await ours(k, token_ids)
        # For reference only (not part of either side): the bare KvRouter query ours makes.
        c = await loads_only(token_ids)
        if k >= warmup:
            ours_s.append(a)
            dyn_s.append(b)
            gpl_s.append(c)
    gc.callbacks.remove(on_gc)

    def pct(xs: list[float], q: float) -> float:
        return round(float(np.percentile(np.asarray(xs) * 1e6, q)), 1)

    return {
        "ours_p50_us": pct(ours_s, 50),
        "ours_p99_us": pct(ours_s, 99),
        "dynamo_p50_us": pct(dyn_s, 50),
        "dynamo_p99_us": pct(dyn_s, 99),
        "ours_mean_us": round(float(np.mean(ours_s)) * 1e6, 1),
        "dynamo_mean_us": round(float(np.mean(dyn_s)) * 1e6, 1),
        "p99_ratio": round(pct(ours_s, 99) / pct(dyn_s, 99), 2),
        "get_potential_loads_p50_us": pct(gpl_s, 50),
        "get_potential_loads_p99_us": pct(gpl_s, 99),
        "ours_signals_p50_us": pct([a for a, _ in split[-samples:]], 50),
        "ours_decide_p50_us": pct([b for _, b in split[-samples:]], 50),
        "ours_decide_p99_us": pct([b for _, b in split[-samples:]], 99),
        "gc_enabled": gc.isenabled(),
        "gc_pauses": len(gc_pauses),
        "gc_pause_max_us": round(max(gc_pauses, default=0.0) * 1e6, 1),
        "n": samples,
        "warmup": warmup,
        "workers_seen": len(worker_ids),
        "kv_holders": [len(ws) for ws in holders],
        "kv_holders_visible": visible,
    }


def _child(args: argparse.Namespace) -> None:
    import uvloop
    from dynamo.runtime import DistributedRuntime, dynamo_worker

    result: dict = {}

    @dynamo_worker()
    async def main(runtime: DistributedRuntime) -> None:
        try:
            result.update(await _measure(runtime, args.child, args.samples, args.warmup, args.seed))
        finally:
            runtime.shutdown()

    uvloop.run(main())
    Path(args.out).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- parent side
def _run_one(n: int, args: argparse.Namespace) -> dict:
    from deploy.local_stack import LocalStack, StackConfig, loopback_env

    cfg = StackConfig(workers=n, arm="round-robin", ready_timeout_s=300.0)
    with LocalStack(cfg) as stack:
        out = stack.workdir / f"decision-{n}.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.decision",
            "--child",
            str(n),
            "--samples",
            str(args.samples),
            "--warmup",
            str(args.warmup),
            "--seed",
            str(args.seed),
            "--out",
            str(out),
        ]
        # DYN_LOG=warn: best_worker logs every selection at INFO; timing that write would
        # charge Dynamo's side for terminal I/O that is not part of its decision.
        env = {**os.environ, **loopback_env(stack.file_kv), "DYN_LOG": "warn"}
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"measurement for {n} workers failed (exit {proc.returncode})")
        return json.loads(out.read_text())


def _write(results: dict, args: argparse.Namespace, command: str) -> None:
    cores = os.cpu_count() or 0
    label = LABEL_TEMPLATE.format(cores=cores)
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {str(n): r for n, r in results.items()}
    doc["machine"] = {
        "label": label,
        "cpus": cores,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    doc["command"] = command
    doc["prompt"] = {
        "tokens": PROMPT_TOKENS,
        "shared_prefix_tokens": SYSTEM_TOKENS,
        "block_size": BLOCK_SIZE,
    }
    (out_dir / "decision.json").write_text(json.dumps(doc, indent=2) + "\n")

    load = doc["machine"]["load_avg_at_start"]
    lines = [
        "# Routing decision latency: ours vs Dynamo `KvRouter.best_worker`",
        "",
        f"Figures: {label} (load average {load[0]} at the start of the run).",
        "One run; both sides interleaved (AB, BA, ...) on the same prompts",
        f"({PROMPT_TOKENS} tokens: a {SYSTEM_TOKENS}-token system prompt cached on a quarter of",
        "the workers by real requests, plus a fresh suffix per sample);",
        f"{args.samples} samples per side per worker count after {args.warmup} warm-up pairs.",
        "",
        "* ours = `LocalRouting.decide`: one `get_potential_loads` + `RouterService.find_worker`",
        "  (signals from the rows + our load, `Router.decide`): one full decision as the processor",
        "  makes it;",
        "* Dynamo = `await KvRouter.best_worker(token_ids)` (query-only) on the same KvRouter.",
        "",
        "Command (repo root):",
        "",
        "```",
        command,
        "```",
        "",
        "| workers | ours p50 (µs) | ours p99 (µs) | Dynamo p50 (µs) | Dynamo p99 (µs) "
        "| p99 ours/Dynamo | `get_potential_loads` alone p50/p99 (µs) "
        "| of ours: decide p50 (µs) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in results.items():
        lines.append(
            f"| {n} | {r['ours_p50_us']:.0f} | {r['ours_p99_us']:.0f} | {r['dynamo_p50_us']:.0f} "
            f"| {r['dynamo_p99_us']:.0f} | {r['p99_ratio']:.2f} "
            f"| {r['get_potential_loads_p50_us']:.0f} / {r['get_potential_loads_p99_us']:.0f} "
            f"| {r['ours_decide_p50_us']:.0f} |"
        )
    lines += [
        "",
        "`get_potential_loads` alone is measured in the same loop for reference (it is the",
        "KvRouter query inside ours, returning one Python dict per worker); the rest of ours is",
        "our Python: building the per-worker arrays (`signals_from_rows`) and",
        "`Router.decide` (its p50 is the last column). Dynamo's logging is set to `warn` in the",
        "measuring process (`best_worker` logs every selection at INFO otherwise).",
        "",
        "Target: ours p99 <= 1.5x Dynamo's p99 at 64 workers. Other processes on the machine",
        "add noise to both sides alike; compare the ratio within a run, not absolute values",
        "across runs.",
        "",
    ]
    if 64 in results:
        r64 = results[64]
        ratio = r64["p99_ratio"]
        verdict = "met" if ratio <= 1.5 else "NOT met"
        lines += [
            f"In this run: p99 {ratio:.2f}x at 64 workers, target {verdict}; at p50 ours is "
            f"{r64['ours_p50_us'] / r64['dynamo_p50_us']:.2f}x Dynamo's. On this loaded box the",
            "p99 of both sides is dominated by scheduling noise, so the p99 ratio moves between",
            "runs (1.3x-2.0x at 64 workers in the runs made while tuning); the p50 gap (our",
            "work on top of `get_potential_loads`) is the stable part.",
            "",
        ]
    (out_dir / "decision.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--workers",
        default=",".join(map(str, DEFAULT_WORKERS)),
        help="comma-separated worker counts",
    )
    ap.add_argument("--samples", type=int, default=2000, help="samples per side")
    ap.add_argument("--warmup", type=int, default=100, help="warm-up pairs (not recorded)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--results-dir", default=str(RESULTS), help="where to write decision.*")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    counts = [int(x) for x in args.workers.split(",") if x]
    command = "python -m benchmarks.decision" + "".join(f" {a}" for a in sys.argv[1:])
    results: dict[int, dict] = {}
    for n in counts:
        print(f"[decision] {n} workers ...", flush=True)
        results[n] = _run_one(n, args)
        r = results[n]
        print(
            f"[decision] {n}: ours p50/p99 {r['ours_p50_us']}/{r['ours_p99_us']} µs, "
            f"dynamo {r['dynamo_p50_us']}/{r['dynamo_p99_us']} µs, "
            f"p99 ratio {r['p99_ratio']}; get_potential_loads alone "
            f"{r['get_potential_loads_p50_us']}/{r['get_potential_loads_p99_us']} µs; "
            f"{r['gc_pauses']} GC pauses, max {r['gc_pause_max_us']} µs; ours = signals "
            f"{r['ours_signals_p50_us']} + decide {r['ours_decide_p50_us']} µs at p50",
            flush=True,
        )
    _write(results, args, command)


if __name__ == "__main__":
    main()
