"""What the requests at a replay's TTFT p99 spend their time on, per arm.

    python -m benchmarks.replay.tail_parts [--workload agentic_pressure] [--seeds 1,2,3]

Why: a router can shorten only some of a slow request's time to first token. The live
workload's sessions run on the replay's engines (``live_mirror``), and every request whose
TTFT lies between its seed's 98.5th and 99.5th percentile is cut into four parts:

* ``wait``: from arrival to the start of the first pass that computes its prompt (the pass
  in flight, and any queue ahead of it);
* ``own``: its own prompt chunks, each priced alone by the engine's prefill polynomial;
* ``shared``: what other requests' prompt tokens in the same passes added to those passes;
* ``decode``: the decode step of the running requests that every one of its passes carries.

The parts add up to the TTFT. ``own`` is set by the cache (what was evicted), ``decode`` by
the load; ``wait`` and ``shared`` are where placement acts. The last line is the floor that
gives: ``own`` plus ``decode`` over kv's p99, which no placement goes below on the cache and
load of ours' run.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from benchmarks.replay.cluster import ClusterConfig, Policy, run_replay
from benchmarks.replay.engine import EngineState, PassResult, pass_prefill_ms
from benchmarks.replay.live_mirror import arm_policies, live_trace
from benchmarks.replay.records import RequestRecord
from benchmarks.replay.trace import TraceRequest

PARTS = ("wait", "own", "shared", "decode")
BAND = (98.5, 99.5)  # the requests that set the p99


@dataclass(slots=True)
class _Pass:
    start_ms: float
    end_ms: float
    own_tokens: int
    batch_tokens: int
    speed: float


def split(record: RequestRecord, passes: list[_Pass]) -> dict[str, float]:
    """The four parts of one request's TTFT, from the passes that computed its prompt."""
    mine = [p for p in passes if p.start_ms < record.first_token_ms]
    own = sum(pass_prefill_ms(p.own_tokens, p.speed) for p in mine)
    batch = sum(pass_prefill_ms(p.batch_tokens, p.speed) for p in mine)
    return {
        "wait": mine[0].start_ms - record.arrival_ms,
        "own": own,
        "shared": batch - own,
        "decode": sum(p.end_ms - p.start_ms for p in mine) - batch,
    }


def tail_parts(
    trace: list[TraceRequest],
    cluster: ClusterConfig,
    policy: Policy,
    band: tuple[float, float] = BAND,
) -> tuple[list[RequestRecord], list[tuple[RequestRecord, dict[str, float]]]]:
    """The replay's records, and each request in the TTFT percentile ``band`` with its parts."""
    passes: dict[str, list[_Pass]] = {}

    def seen(w: int, start_ms: float, result: PassResult, prefilling: list[EngineState]) -> None:
        batch = sum(s.sched_prompt for s in prefilling)
        speed = cluster.worker_speed(w)
        for s in prefilling:
            entry = _Pass(start_ms, result.end_ms, s.sched_prompt, batch, speed)
            passes.setdefault(s.req.request_id, []).append(entry)

    records = run_replay(trace, cluster, policy, on_pass=seen)
    ttft = np.array([r.ttft_ms for r in records])
    lo, hi = np.percentile(ttft, band)
    return records, [(r, split(r, passes[r.request_id])) for r in records if lo <= r.ttft_ms <= hi]


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.replay.tail_parts",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument("--workload", default="agentic_pressure")
    ap.add_argument("--seeds", default="1,2,3")
    args = ap.parse_args()
    parts: dict[str, list[dict[str, float]]] = {"ours": [], "dynamo_kv": []}
    ttft: dict[str, list[float]] = {"ours": [], "dynamo_kv": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        trace, cluster = live_trace(args.workload, seed)
        for arm, policy in arm_policies(cluster, seed).items():
            records, band = tail_parts(trace, cluster, policy)
            parts[arm] += [p for _, p in band]
            ttft[arm] += [r.ttft_ms for r in records]
    lo, hi = BAND
    print(f"{args.workload} on the replay, seeds {args.seeds}: requests between each seed's")
    print(f"TTFT p{lo:g} and p{hi:g}, mean ms")
    print("| arm | requests | TTFT | " + " | ".join(PARTS) + " | pooled p99 |")
    print("|---|---:|---:|" + "---:|" * len(PARTS) + "---:|")
    for arm, band in parts.items():
        mean = {k: float(np.mean([b[k] for b in band])) for k in PARTS}
        cells = " | ".join(f"{mean[k]:.0f}" for k in PARTS)
        p99 = float(np.percentile(ttft[arm], 99))
        print(f"| {arm} | {len(band)} | {sum(mean.values()):.0f} | {cells} | {p99:.0f} |")
    ours = parts["ours"]
    floor = float(np.mean([b["own"] + b["decode"] for b in ours]))
    kv_p99 = float(np.percentile(ttft["dynamo_kv"], 99))
    print(f"floor on ours' cache and load (own + decode) / kv's pooled p99: {floor / kv_p99:.3f}")


if __name__ == "__main__":
    main()
