"""Agentic traces for the replay: Dynamo's ``agentic_mooncake`` v2 format, a seeded generator
with presets, and a converter from the processor's own traces.

    python -m benchmarks.replay.agentic generate --preset pressure --workers 8 --seed 0 --out F
    python -m benchmarks.replay.agentic generate --preset demo --seed 0 --out F
    python -m benchmarks.replay.agentic convert SRC [SRC ...] DST [--keep-schedule]
    python -m benchmarks.replay.agentic stats F --workers 8 --num-gpu-blocks 512 [--speed 1]

A generated file records its preset in the header (``akr_preset``: workers, num_gpu_blocks,
speed, decode_speedup, pressure, load, seed), which Dynamo's replay ignores. Replay it in
Dynamo 1.6.1 with ``run_trace_replay(F, trace_format="agentic_mooncake",
execution_model=NAME, num_workers=W, extra_engine_args={"engine": {"block_size": 64,
"num_gpu_blocks": B, "speedup_ratio": S, "decode_speedup_ratio": D}})``.

The pieces: ``agentic_format`` (reader, writer), ``agentic_gen`` (generator, presets),
``agentic_load`` (live context and the load model), ``agentic_convert`` (processor traces).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from benchmarks.replay.agentic_convert import Converted, convert_processor_trace
from benchmarks.replay.agentic_format import (
    read_agentic,
    read_agentic_header,
    row_request_ids,
    write_agentic,
)
from benchmarks.replay.agentic_gen import (
    AgenticParams,
    Preset,
    demo_preset,
    generate_agentic,
    pressure_params,
)
from benchmarks.replay.agentic_load import ENGINE_BLOCK, live_context_tokens, modelled_load
from benchmarks.replay.trace import TraceError, TraceRequest

__all__ = [
    "AgenticParams",
    "Converted",
    "Preset",
    "convert_processor_trace",
    "demo_preset",
    "generate_agentic",
    "live_context_tokens",
    "main",
    "modelled_load",
    "pressure_params",
    "read_agentic",
    "read_agentic_header",
    "row_request_ids",
    "write_agentic",
]


def preset_header(preset: Preset) -> dict[str, object]:
    """The header field recording what a generated file was sized for."""
    fields = ("name", "seed", "workers", "num_gpu_blocks", "speed", "decode_speedup")
    out: dict[str, object] = {k: getattr(preset, k) for k in fields}
    out |= {"pressure": preset.pressure, "load": preset.load}
    out["params"] = dataclasses.asdict(preset.params)
    return {"akr_preset": out}


def stats(
    requests: list[TraceRequest],
    workers: int,
    num_gpu_blocks: int,
    speed: float = 1.0,
    decode_speedup: float = 1.0,
) -> dict[str, float]:
    """Sessions, requests, planned live context over the cluster's KV and modelled load."""
    live = live_context_tokens(requests)
    kv = workers * num_gpu_blocks * ENGINE_BLOCK
    inner = live[10:-10] if len(live) > 40 else live  # without the ramps (module agentic_load)
    return {
        "sessions": len({r.session_id for r in requests}),
        "requests": len(requests),
        "span_s": round(max((r.arrival_ms for r in requests), default=0.0) / 1000.0, 1),
        "live_over_kv_mean": round(float(inner.mean()) / kv, 3) if len(inner) else 0.0,
        "live_over_kv_min": round(float(inner.min()) / kv, 3) if len(inner) else 0.0,
        "modelled_load": round(
            modelled_load(requests, workers, num_gpu_blocks, speed, decode_speedup=decode_speedup),
            3,
        ),
        "max_input_length": max((r.input_length for r in requests), default=0),
    }


def _generate(args: argparse.Namespace) -> None:
    if args.preset == "demo":
        preset = demo_preset(args.seed)
    else:
        preset = pressure_params(
            args.workers,
            args.seed,
            num_gpu_blocks=args.num_gpu_blocks,
            pressure=args.pressure,
            load=args.load,
            speed=args.speed,
            decode_speedup=args.decode_speedup,
            max_requests=args.max_requests,
            duration_s=args.duration_s,
        )
    requests = generate_agentic(preset.seed, preset.params)
    write_agentic(
        args.out, requests, source=f"akr.{preset.name}", extra_header=preset_header(preset)
    )
    s = stats(requests, preset.workers, preset.num_gpu_blocks, preset.speed, preset.decode_speedup)
    print(
        json.dumps({"out": str(args.out), **preset_header(preset)["akr_preset"], **s}, default=str)
    )


def _convert(args: argparse.Namespace) -> None:
    *srcs, dst = args.paths
    if not srcs:
        raise SystemExit("convert needs SRC ... DST")
    done = convert_processor_trace([Path(s) for s in srcs], dst, keep_schedule=args.keep_schedule)
    n_dep = done.dependent
    print(f"{done.requests} requests, {done.sessions} sessions, {n_dep} after a tool gap -> {dst}")
    if done.dropped:
        print(f"left out {len(done.dropped)} failed requests:")
        for line in done.dropped:
            print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.replay.agentic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate", help="write a generated agentic trace")
    gen.add_argument("--preset", choices=("pressure", "demo"), default="pressure")
    gen.add_argument("--workers", type=int, default=8)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--num-gpu-blocks", type=int, default=512, help="per worker, 64 tokens each")
    gen.add_argument("--pressure", type=float, default=1.5)
    gen.add_argument("--load", type=float, default=0.5, help="1.0 = where Dynamo's replay queues")
    gen.add_argument("--speed", type=float, default=1.0, help="mocker speedup_ratio")
    gen.add_argument(
        "--decode-speedup", type=float, default=1.0, help="mocker decode_speedup_ratio"
    )
    gen.add_argument("--max-requests", type=int, default=15_000)
    gen.add_argument("--duration-s", type=float, default=600.0)
    conv = sub.add_parser("convert", help="processor trace file(s) -> agentic trace")
    conv.add_argument("paths", nargs="+", help="SRC [SRC ...] DST")
    conv.add_argument(
        "--keep-schedule", action="store_true", help="recorded arrivals as lower bounds"
    )
    st = sub.add_parser("stats", help="what an agentic trace asks of a cluster")
    st.add_argument("path", type=Path)
    st.add_argument("--workers", type=int, required=True)
    st.add_argument("--num-gpu-blocks", type=int, required=True)
    st.add_argument("--speed", type=float, default=1.0)
    st.add_argument("--decode-speedup", type=float, default=1.0)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "generate":
            if args.preset == "demo" and args.workers != 8:
                parser.error("the demo preset is for 8 workers")
            _generate(args)
        elif args.cmd == "convert":
            _convert(args)
        else:
            reqs = read_agentic(args.path)
            s = stats(reqs, args.workers, args.num_gpu_blocks, args.speed, args.decode_speedup)
            print(json.dumps(s))
    except (TraceError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
