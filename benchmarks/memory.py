"""Retained memory of the processor and router over a long agentic workload.

    python -m benchmarks.memory    # 64 sessions x 50 turns -> benchmarks/results/memory.json

What runs: a ``LocalStack`` in arm "round-robin" starts simulated workers (``python -m
dynamo.mocker``, real KV events) and a stock frontend (unused). The processor runs *in this
process*: ``processor.handler.ProcessorHandler`` with a real ``DistributedRuntime`` (file
discovery of that stack), the real ``router.policy.Router``, Dynamo's ``KvRouter`` for overlap,
the async trace writer (to a temp file) and the metrics objects. Each request is a
preprocessed-request dict, as the stock frontend would hand it over, fed to
``handler.generate(request, context=None)`` and streamed to the end: the same code path as
behind the frontend, minus the frontend.

Workload: ``--sessions`` concurrent conversations; every turn each session sends its whole
context (a shared system prompt + its own history, growing by ``--growth`` tokens a turn,
~32k tokens at turn 50) with NAT-style hints in our annotation encoding (prefix id,
total_requests = turns, iat, osl, and a cache pin re-sent every turn). Turns are barriered:
all sessions finish turn t before turn t+1 starts, so "after N turns" is well defined.

Measurement: ``tracemalloc`` (16 frames), started once the workload's contexts exist and
before the handler does. After turns 10, 25 and 50: wait for the trace writer to drain,
``gc.collect()``, snapshot, and attribute every live allocation to the innermost of
``processor/``, ``router/`` or this benchmark on its allocation traceback ("other": none of
them). processor + router is the retained Python memory that must stay flat in turns;
"benchmark" (the growing contexts, 8 bytes a token) and "other" are recorded for context, as
is the process RSS. tracemalloc does not see Rust memory (Dynamo runtime, the KvRouter's radix
index fed by KV events); RSS does, together with the contexts and the allocator's free lists.

KV capacity: ``--gpu-blocks`` 4096 per worker x 4 workers = 16384 blocks (1.05 M tokens),
deliberately *small enough*: the working set (64 contexts, ~17 k tokens each at turn 25,
~32.6 k at turn 50, ~2.1 M tokens) outgrows it from about turn 24, so the workers evict as a
loaded GPU fleet does and the KV index the router reads is bounded by fleet capacity, not by
history.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from deploy.local_stack import (
    REPO_ROOT,
    WORKER_ENDPOINT,
    LocalStack,
    StackConfig,
    loopback_env,
)

RESULT = REPO_ROOT / "benchmarks" / "results" / "memory.json"
CHECKPOINTS = (10, 25, 50)
MACHINE = "simulated workers on a 2-core machine"
_PARTS = {
    str(REPO_ROOT / "processor") + os.sep: "processor",
    str(REPO_ROOT / "router") + os.sep: "router",
    str(Path(__file__).resolve()): "benchmark",
}


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _part(filename: str) -> str | None:
    for prefix, part in _PARTS.items():
        if filename.startswith(prefix):
            return part
    return None


def _retained(snapshot: tracemalloc.Snapshot) -> dict[str, Any]:
    """Live allocations by the innermost of processor/, router/ or this benchmark on their
    allocation traceback ("other": none of them, e.g. the event loop or Dynamo's Python)."""
    by_part = {"processor": 0, "router": 0, "benchmark": 0, "other": 0}
    by_line: dict[str, int] = {}
    for trace in snapshot.traces:
        for frame in reversed(trace.traceback):  # innermost first
            part = _part(frame.filename)
            if part is not None:
                by_part[part] += trace.size
                if part != "benchmark":
                    key = f"{os.path.relpath(frame.filename, REPO_ROOT)}:{frame.lineno}"
                    by_line[key] = by_line.get(key, 0) + trace.size
                break
        else:
            by_part["other"] += trace.size
    top = sorted(by_line.items(), key=lambda kv: -kv[1])[:12]
    return {
        "total": by_part["processor"] + by_part["router"],
        "by_component": by_part,
        "top_lines": dict(top),
    }


class Session:
    """One conversation: its growing context and its hints.

    The context is one list, extended in place and handed to the processor as the request's
    ``token_ids`` (the processor only reads it), so the benchmark does not allocate a fresh
    token list per request; its memory is attributed to "benchmark". Token ids are drawn
    from 1..255, Python's cached small ints, so a context costs 8 bytes a token and not one
    traced int object per token (random 64-token blocks still never collide: 255**64).
    """

    def __init__(self, index: int, system: list[int], rng: random.Random) -> None:
        self.prefix_id = f"mem-session-{index:03d}"
        self.context = list(system)
        self.rng = rng

    def grow(self, tokens: int) -> None:
        self.context.extend(self.rng.randrange(1, 256) for _ in range(tokens))


async def _run(args: argparse.Namespace, stack: LocalStack) -> dict[str, Any]:
    from dynamo.runtime import DistributedRuntime

    from processor.config import ProcessorConfig
    from processor.handler import ProcessorHandler
    from router.config import RouterConfig
    from router.hints import AgentHints, encode_annotations
    from router.service import RouterService

    runtime = DistributedRuntime(asyncio.get_running_loop(), "file", "tcp", event_plane="zmq")
    trace_dir = Path(tempfile.mkdtemp(prefix="akr-mem-traces-"))
    config = ProcessorConfig(
        worker_endpoint=WORKER_ENDPOINT,
        block_size=args.block_size,
        trace_path=trace_dir / "processor.jsonl",
        metrics_port=None,
    )
    service = RouterService(RouterConfig(worker_capacity_blocks=args.gpu_blocks), args.block_size)
    rng = random.Random(args.seed)
    system = [rng.randrange(1, 256) for _ in range(args.system_tokens)]
    sessions = [
        Session(i, system, random.Random(args.seed * 1000 + i)) for i in range(args.sessions)
    ]
    for s in sessions:
        s.grow(args.growth)
    hints = [
        encode_annotations(
            AgentHints(
                prefix_id=s.prefix_id,
                total_requests=args.turns,
                osl=args.max_tokens,
                iat_ms=250,
                latency_sensitivity=1.0,
                priority=0,
                pin_type="ephemeral",
                pin_ttl_s=30.0,
            )
        )
        for s in sessions
    ]
    # Tracing starts here: the workload (contexts, hint strings) exists, the processor not yet.
    if args.frames:
        tracemalloc.start(args.frames)
    handler = ProcessorHandler(runtime, config, service)
    await handler.start()
    stats = {"requests": 0, "errors": 0, "output_tokens": 0, "prompt_tokens": 0, "cached": 0}

    async def turn(i: int) -> None:
        s = sessions[i]
        request = {
            "token_ids": s.context,
            "stop_conditions": {"max_tokens": args.max_tokens},
            "sampling_options": {},
            "output_options": {},
            "eos_token_ids": [],
            "annotations": hints[i],
        }
        try:
            async for item in handler.generate(request, None):
                ids = item.get("token_ids") if isinstance(item, dict) else None
                stats["output_tokens"] += len(ids or ())
                usage = item.get("completion_usage") if isinstance(item, dict) else None
                if usage:
                    details = usage.get("prompt_tokens_details") or {}
                    stats["cached"] += details.get("cached_tokens") or 0
        except Exception as exc:  # counted, reported; the benchmark keeps going
            stats["errors"] += 1
            print(f"request of {s.prefix_id} failed: {exc!r}", file=sys.stderr)
        stats["requests"] += 1
        stats["prompt_tokens"] += len(s.context)
        s.grow(args.growth)  # the answer + the next user message / tool output

    checkpoints: dict[int, dict[str, Any]] = {}
    started = time.monotonic()
    for t in range(1, args.turns + 1):
        t0 = time.monotonic()
        await asyncio.gather(*(turn(i) for i in range(args.sessions)))
        if args.verbose:
            print(f"turn {t}: {time.monotonic() - t0:.2f} s", flush=True)
        if t in args.checkpoints and args.frames:
            writer = handler._writer
            while writer is not None and writer.pending:  # noqa: ASYNC110 - the writer has no event
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # let background tasks (sweep, writer batch) settle
            gc.collect()
            snap = tracemalloc.take_snapshot()
            ours = _retained(snap)
            checkpoints[t] = {
                "retained": ours,
                "rss_bytes": _rss_bytes(),
                "context_tokens": len(sessions[0].context) - args.growth,
                "router": {k: v for k, v in service.router.stats().items() if k != "reasons"},
                "load_tracker_active": len(service.load),
            }
            del snap
            print(
                f"turn {t:3d}: processor+router {ours['total'] / 1024:8.1f} KiB "
                f"(processor {ours['by_component']['processor'] / 1024:.1f}, router "
                f"{ours['by_component']['router'] / 1024:.1f}); other python "
                f"{ours['by_component']['other'] / 2**20:.1f} MiB; benchmark "
                f"{ours['by_component']['benchmark'] / 2**20:.1f} MiB; "
                f"RSS {_rss_bytes() / 2**20:.0f} MiB; "
                f"context {checkpoints[t]['context_tokens']} tokens; "
                f"{time.monotonic() - t0:.1f} s/turn",
                flush=True,
            )
    elapsed = time.monotonic() - started
    await handler.stop()
    if args.frames:
        tracemalloc.stop()
    runtime.shutdown()
    return {
        "checkpoints": checkpoints,
        "stats": stats,
        "elapsed_s": round(elapsed, 1),
        "reasons": dict(service.router.reasons),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--system-tokens", type=int, default=2048)
    parser.add_argument("--growth", type=int, default=610, help="context tokens added per turn")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--gpu-blocks", type=int, default=4096, help="KV blocks per worker")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--speedup", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--frames", type=int, default=16, help="tracemalloc frames (0 = off)")
    parser.add_argument("--verbose", action="store_true", help="print every turn's time")
    args = parser.parse_args(argv)
    args.checkpoints = sorted({c for c in CHECKPOINTS if c <= args.turns} | {args.turns})

    os.environ.setdefault("DYN_LOG", "warn")  # Dynamo logs every request at info
    config = StackConfig(
        workers=args.workers,
        speedup=args.speedup,
        gpu_blocks=args.gpu_blocks,
        block_size=args.block_size,
        arm="round-robin",
    )
    with LocalStack(config) as stack:
        os.environ.update(loopback_env(stack.file_kv))
        result = asyncio.run(_run(args, stack))

    cps = result["checkpoints"]
    first, last = cps[min(cps)], cps[max(cps)]
    growth = last["retained"]["total"] - first["retained"]["total"]
    out = {
        "turns": {str(t): cp["retained"]["total"] for t, cp in cps.items()},
        "unit": "bytes of live Python allocations on processor/ + router/ code paths "
        "(tracemalloc, after gc)",
        "growth_first_to_last_bytes": growth,
        "growth_per_turn_bytes": round(growth / max(1, max(cps) - min(cps)), 1),
        "by_component": {str(t): cp["retained"]["by_component"] for t, cp in cps.items()},
        "other_python_bytes": {
            str(t): cp["retained"]["by_component"]["other"] for t, cp in cps.items()
        },
        "rss_bytes": {str(t): cp["rss_bytes"] for t, cp in cps.items()},
        "max_context_tokens": {str(t): cp["context_tokens"] for t, cp in cps.items()},
        "router_state": {str(t): cp["router"] for t, cp in cps.items()},
        "top_lines": {str(t): cp["retained"]["top_lines"] for t, cp in cps.items()},
        "sessions": args.sessions,
        "turn_count": args.turns,
        "requests": result["stats"]["requests"],
        "errors": result["stats"]["errors"],
        "prompt_tokens": result["stats"]["prompt_tokens"],
        "cached_tokens": result["stats"]["cached"],
        "output_tokens": result["stats"]["output_tokens"],
        "decision_reasons": result["reasons"],
        "elapsed_s": result["elapsed_s"],
        "workers": args.workers,
        "gpu_blocks_per_worker": args.gpu_blocks,
        "block_size": args.block_size,
        "kv_capacity_note": "small enough: fleet capacity 1.05 M tokens; the ~2.1 M-token "
        "working set at turn 50 outgrows it from about turn 24, so workers evict",
        "speedup_ratio": args.speedup,
        "system_tokens": args.system_tokens,
        "growth_tokens_per_turn": args.growth,
        "max_tokens": args.max_tokens,
        "command": " ".join(
            ["python -m benchmarks.memory", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": MACHINE,
        "python": platform.python_version(),
        "measured_with": "tracemalloc "
        + str(args.frames)
        + " frames; the processor runs in-process "
        "(ProcessorHandler + Router + KvRouter + trace writer) against python -m dynamo.mocker "
        "workers; Rust memory (Dynamo runtime, KV index) is only in rss_bytes",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    print("turn  processor+router(B)  other python(MiB)  RSS(MiB)  context tokens")
    for t, cp in cps.items():
        other = cp["retained"]["by_component"]["other"]
        print(
            f"{t:4d}  {cp['retained']['total']:19d}  {other / 2**20:17.1f}"
            f"  {cp['rss_bytes'] / 2**20:8.0f}  {cp['context_tokens']:14d}"
        )


if __name__ == "__main__":
    main()
