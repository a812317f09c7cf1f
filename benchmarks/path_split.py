"""Where our arm's TTFT goes under load: path (gateway, frontend, processor hop) vs worker.

    python -m benchmarks.path_split [--short] [--repeats 1] [--seed 1]

Drives the seeded agentic workload of the routing benchmark (``benchmarks.workloads``) through
three identical simulated clusters in turn, one after the other in one run:

* ``dynamo_kv``: the stock frontend with ``--router-mode kv`` (the routing benchmark's baseline);
* ``ours``: gateway -> stock frontend -> our processor -> workers, NAT hints in the body;
* ``ours_no_gateway``: the same stack, the client sending the gateway's translation of the
  same bodies (``frontend.translate``) straight to the stock frontend: what the gateway adds
  under this load, side by side.

For our arms every client record is joined to the processor's trace record of the same request
(the answer id is the processor's request id), which splits the client's TTFT into:
``request path`` (client send -> processor handler entry: gateway, frontend template and
tokenizer, request plane), ``decision`` (routing), ``worker`` (the processor's own TTFT:
``client.direct`` -> first token, i.e. request plane to the worker, queueing and prefill) and
``response path`` (the rest: relay of the first token back through processor, frontend and
gateway). Requests served almost entirely from cache (>= 90%: no router could do better for
them) are reported apart. Comparing ``worker`` of ours with the whole client TTFT of
``dynamo_kv`` on cache hits tells routing from path: equal worker times mean the difference
is the path. Figures come from simulated workers on this machine (not GPUs); compare within
one run. Writes ``benchmarks/results/path_split.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.driver import Driver, LoadSampler, Record
from benchmarks.routing import MACHINE, code_state, stack_config
from benchmarks.workloads import Workload, build
from deploy.local_stack import LocalStack
from frontend.translate import translate

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("dynamo_kv", "ours", "ours_no_gateway")
HIT = 0.9
PARTS = ("request_path_ms", "decision_ms", "worker_ms", "response_path_ms")


def write_results(out: Path, result: dict[str, Any], table: str) -> str:
    """``out``.json and ``out``.md of a path benchmark; returns the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(table)
    return table


def translated(body: dict[str, Any]) -> dict[str, Any]:
    """The body the gateway would forward (its headers only repeat ``prefix_id`` and the
    request id, which the body's annotation carries too)."""
    return translate(body, {}, str(uuid.uuid4())).body


def join(records: list[Record], traces: list[Any], t0_wall: float) -> list[dict[str, float]]:
    """Per request of ours: client TTFT split by the processor's trace record of it."""
    by_id = {t.request_id: t for t in traces}
    rows = []
    for r in records:
        t = by_id.get(r.request_id or "")
        if not r.ok or t is None or r.ttft_ms is None or t.ttft_ms is None:
            continue
        request_path = (t.ts - (t0_wall + r.t_send_s)) * 1000.0
        decision = (t.decision_us or 0.0) / 1000.0
        rows.append(
            {
                "hit": (r.cached_tokens / r.prompt_tokens) >= HIT if r.prompt_tokens else False,
                "ttft_ms": r.ttft_ms,
                "request_path_ms": request_path,
                "decision_ms": decision,
                "worker_ms": t.ttft_ms,
                "response_path_ms": r.ttft_ms - request_path - decision - t.ttft_ms,
            }
        )
    return rows


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    a = np.asarray(values)
    return {
        "mean": round(float(a.mean()), 2),
        "p50": round(float(np.percentile(a, 50)), 2),
        "p90": round(float(np.percentile(a, 90)), 2),
        "p99": round(float(np.percentile(a, 99)), 2),
    }


def run_arm(arm: str, wl: Workload, repeat: int) -> dict[str, Any]:
    from processor.traces import poll_records

    ours = arm.startswith("ours")
    stack_arm = "ours" if ours else arm  # all our arms run the same stack
    cfg = stack_config(stack_arm, wl)
    with LocalStack(cfg) as stack:
        url = stack.frontend_url if arm == "ours_no_gateway" else stack.url
        driver = Driver(
            url,
            stack.model_name,
            stack_arm,
            wl,
            repeat,
            session_header=False,
            body_transform=translated if arm == "ours_no_gateway" else None,
        )

        async def drive() -> dict[str, Any]:
            sampler = LoadSampler()
            sampler.start()
            await driver.run()
            return await sampler.stop()

        load = asyncio.run(drive())
        # perf_counter -> wall clock, both read now; the run took about a minute.
        t0_wall = driver.t0 + (time.time() - time.perf_counter())
        traces: list[Any] = []
        if ours:  # the trace writer flushes asynchronously
            want = sum(1 for r in driver.records if r.ok)
            traces = poll_records(
                stack.trace_path, lambda recs: len(recs) >= want, 10.0, interval_s=0.2
            )
    ok = [r for r in driver.records if r.ok]
    hit_ttft = [
        r.ttft_ms for r in ok if r.prompt_tokens and r.cached_tokens / r.prompt_tokens >= HIT
    ]
    out: dict[str, Any] = {
        "requests": len(driver.records),
        "failed": len(driver.records) - len(ok),
        "kv_hit_ratio": round(
            sum(r.cached_tokens for r in ok) / max(1, sum(r.prompt_tokens for r in ok)), 4
        ),
        "hits": len(hit_ttft),
        "ttft_ms": stats([r.ttft_ms for r in ok if r.ttft_ms is not None]),
        "hit_ttft_ms": stats(hit_ttft),
        "load": load,
    }
    if traces:
        rows = join(driver.records, traces, t0_wall)
        out["joined"] = len(rows)
        out["split_all"] = {p: stats([row[p] for row in rows]) for p in PARTS}
        out["split_hits"] = {p: stats([row[p] for row in rows if row["hit"]]) for p in PARTS}
    return out


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Path split: where our arm's TTFT goes under the agentic load",
        "",
        f"Machine: {MACHINE}. Command: `{meta['command']}` ({meta['started']}). Times in ms; "
        "all figures from simulated workers, not GPUs; arms ran one after the other in one run.",
        "",
        "Client TTFT (mean / p50 / p90 / p99):",
        "",
        "| arm | repeat | requests | failed | KV hit | hits (>= 90% cached) | all requests "
        "| hits only |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]

    def f(s: dict[str, float | None]) -> str:
        return " / ".join(
            "-" if s[k] is None else f"{s[k]:.1f}" for k in ("mean", "p50", "p90", "p99")
        )

    for rep, arms in enumerate(result["repeats"]):
        for arm, r in arms.items():
            lines.append(
                f"| {arm} | {rep} | {r['requests']} | {r['failed']} | {r['kv_hit_ratio']:.3f} | "
                f"{r['hits']} | {f(r['ttft_ms'])} | {f(r['hit_ttft_ms'])} |"
            )
    lines += [
        "",
        "Our arms, client TTFT split by the processor's trace (mean / p50 / p90 / p99; the "
        "parts' means add up to the client mean, their percentiles do not):",
        "",
        "| arm | repeat | requests | request path | decision | worker (processor TTFT) "
        "| response path |",
        "|---|---|---|---|---|---|---|",
    ]
    for rep, arms in enumerate(result["repeats"]):
        for arm, r in arms.items():
            for kind in ("all", "hits"):
                split = r.get(f"split_{kind}")
                if split:
                    lines.append(
                        f"| {arm} | {rep} | {kind} | "
                        + " | ".join(f(split[p]) for p in PARTS)
                        + " |"
                    )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true", help="the short agentic workload (smoke run)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--out", type=Path, default=RESULTS / "path_split")
    args = ap.parse_args()
    wl = build("agentic", args.seed, 0.25 if args.short else 1.0, 1.0)
    arms = [a for a in args.arms.split(",") if a]
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    repeats = []
    for rep in range(args.repeats):
        order = arms[rep % len(arms) :] + arms[: rep % len(arms)]  # rotate: no arm always first
        done = {}
        for arm in order:
            print(f"repeat {rep} arm {arm} ...", flush=True)
            done[arm] = run_arm(arm, wl, rep)
            r = done[arm]
            print(
                f"  TTFT p50 {r['ttft_ms']['p50']} hits p50 {r['hit_ttft_ms']['p50']} "
                f"({r['hits']} hits, {r['failed']} failed)",
                flush=True,
            )
        repeats.append({a: done[a] for a in arms})
    shown = (
        "python -m benchmarks.path_split"
        + (" --short" if args.short else "")
        + (f" --repeats {args.repeats}" if args.repeats != 1 else "")
    )
    result = {
        "meta": {
            "command": shown,
            "started": started,
            "machine": MACHINE,
            "workload": wl.description,
            "seed": args.seed,
            "hit_threshold": HIT,
            "code": code_state(),
        },
        "repeats": repeats,
    }
    print(write_results(args.out, result, markdown(result)))


if __name__ == "__main__":
    main()
