"""A live workload of benchmarks/routing.py on the replay's virtual clock, in seconds.

    python -m benchmarks.replay.live_mirror [--workload agentic_pressure] [--seeds 1,2,3]

Per seed, both arms' figures; at the end, ours / kv on all the seeds' requests together.

Why: a live run of ``agentic_pressure`` takes 21 minutes for three seeds and its tail moves
with the machine's load; the same sessions replayed on simulated engines take a second or two
per arm and seed (after ~25 s of tokenizing each seed's prompts), with nothing but routing and
the engines in them. The trace is the workload's
own (``benchmarks.workloads.build``): every turn's prompt rendered and tokenized as the live
driver sends it, cut into 64-token blocks identified by their whole prefix, the client's hints
and ``cache_control`` pin as the gateway parses them, and each turn waiting for the previous
answer plus its tool gap. The cluster is the live one
(its speeds and ``gpu_blocks``). Arms: ours (``OursPolicy``, the processor's decision path)
and the port of Dynamo's KV router (``KvPortPolicy``).

What it leaves out is the path: the gateway, Dynamo's frontend and the processor's hop add
a few ms to every live TTFT of ours (docs/DESIGN.md, section 1), and the live engines'
timing jitters.
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np

from benchmarks.pressure_bound import LONG, chains
from benchmarks.replay.cluster import ClusterConfig, Policy, run_replay
from benchmarks.replay.dynamo_kv import KvPortPolicy
from benchmarks.replay.ours import OursPolicy, router_config
from benchmarks.replay.records import RequestRecord
from benchmarks.replay.trace import TraceRequest
from benchmarks.workloads import BLOCK_SIZE, build
from router.hints import parse_agent_hints


def _id(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "little")


def live_trace(workload: str, seed: int) -> tuple[list[TraceRequest], ClusterConfig]:
    """The workload's sessions as replay requests, and the live cluster it runs on."""
    wl = build(workload, seed, 1.0)
    blocks = chains(workload, seed)
    out: list[TraceRequest] = []
    for s in wl.sessions:
        parent: int | None = None
        for i, turn in enumerate(s.turns):
            chain, prompt, _, _ = blocks[(s.session_id, i)]
            # A partial last block is this turn's own: an id no other prompt has.
            tail = hashlib.blake2b(f"{s.session_id}/{i}".encode(), digest_size=8).digest()
            # The hints as the driver sends them and the gateway parses them.
            pin = {"type": "ephemeral", "ttl": turn.cache_ttl} if turn.cache_ttl else None
            hints = parse_agent_hints(turn.hints, pin)
            out.append(
                TraceRequest(
                    index=len(out),
                    arrival_ms=s.start_s * 1000.0,
                    input_length=prompt,
                    output_length=turn.max_tokens,
                    hash_ids=(*map(_id, chain), _id(tail)),
                    hash_block=BLOCK_SIZE,
                    hints=hints,
                    session_id=s.session_id,
                    parent=parent,
                    delay_ms=turn.gap_s * 1000.0 if i else 0.0,
                )
            )
            parent = len(out) - 1
    cluster = ClusterConfig(
        num_workers=len(wl.speeds),
        num_gpu_blocks=wl.gpu_blocks,
        block_size=BLOCK_SIZE,
        speeds=list(wl.speeds),
    )
    return out, cluster


def figures(records: list[RequestRecord]) -> dict[str, float]:
    """TTFT percentiles, reuse, and the share of requests recomputing >= LONG tokens."""
    ttft = np.array([r.ttft_ms for r in records])
    prompt = sum(r.input_length for r in records)
    long = [r.input_length - r.reused_tokens >= LONG for r in records]
    return {
        "ttft_p50_ms": float(np.percentile(ttft, 50)),
        "ttft_p90_ms": float(np.percentile(ttft, 90)),
        "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "reuse": sum(r.reused_tokens for r in records) / prompt if prompt else 0.0,
        "long_recompute": float(np.mean(long)),
    }


def arm_policies(cluster: ClusterConfig, seed: int) -> dict[str, Policy]:
    """The two arms, fresh for one seed: ours as deployed, and the port of Dynamo's KV router."""
    return {
        "ours": OursPolicy(router_config(cluster, seed), BLOCK_SIZE),
        "dynamo_kv": KvPortPolicy(seed=seed),
    }


def replay_arms(
    trace: list[TraceRequest], cluster: ClusterConfig, seed: int
) -> dict[str, list[RequestRecord]]:
    """Both arms' records on one seed's trace (``live_trace``)."""
    policies = arm_policies(cluster, seed)
    return {arm: run_replay(trace, cluster, p) for arm, p in policies.items()}


def pooled_tail(ours: np.ndarray, kv: np.ndarray) -> dict[str, float]:
    """Ours / kv on every seed's requests together: the 99th percentile of one seed is its
    ~10th slowest request, so the pooled figures and the mean of the slowest 1% move less."""

    def slowest(x: np.ndarray) -> float:
        return float(x[x >= np.percentile(x, 99)].mean())

    out = {f"p{q:g}": float(np.percentile(ours, q) / np.percentile(kv, q)) for q in (90, 99, 99.5)}
    out["slowest_1pct_mean"] = slowest(ours) / slowest(kv)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.replay.live_mirror",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument("--workload", default="agentic_pressure")
    ap.add_argument("--seeds", default="1,2,3")
    args = ap.parse_args()
    print(f"{args.workload} on the replay (ours / dynamo_kv port; >= {LONG} tokens recomputed)")
    print("| seed | arm | TTFT p50 | p90 | p99 | reuse | long recomputes | p90 / kv | p99 / kv |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    ttfts: dict[str, list[float]] = {"ours": [], "dynamo_kv": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        records = replay_arms(*live_trace(args.workload, seed), seed)
        res = {arm: figures(recs) for arm, recs in records.items()}
        kv = res["dynamo_kv"]
        for arm, f in res.items():
            ttfts[arm] += [r.ttft_ms for r in records[arm]]
            print(
                f"| {seed} | {arm} | {f['ttft_p50_ms']:.1f} | {f['ttft_p90_ms']:.1f} | "
                f"{f['ttft_p99_ms']:.1f} | {f['reuse']:.3f} | {f['long_recompute']:.1%} | "
                f"{f['ttft_p90_ms'] / kv['ttft_p90_ms']:.3f} | "
                f"{f['ttft_p99_ms'] / kv['ttft_p99_ms']:.3f} |",
                flush=True,
            )
    pooled = pooled_tail(np.array(ttfts["ours"]), np.array(ttfts["dynamo_kv"]))
    shown = ", ".join(f"{k} {v:.3f}" for k, v in pooled.items())
    print(f"pooled over the seeds, ours / kv: {shown}")


if __name__ == "__main__":
    main()
