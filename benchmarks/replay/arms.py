"""Run one arm of a replay: our router, Dynamo's kv (its replay or our port), round-robin.

One entry point, ``run_arm``, so the suite, the single-trace CLI and the demo run arms the same
way. ``dynamo_kv`` means Dynamo's own replay wherever it can run the trace (one engine config
for every worker, a format it reads); elsewhere the validated port on our engine model.
``dynamo_kv_port`` is always the port, so ``ours`` is also compared on the very same engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.replay import dynamo_ref
from benchmarks.replay.cluster import ClusterConfig, run_replay
from benchmarks.replay.dynamo_kv import KvAffinityPolicy, KvPortPolicy, RoundRobinPolicy
from benchmarks.replay.ours import OursPolicy, router_config
from benchmarks.replay.records import RequestRecord
from benchmarks.replay.trace import TraceRequest

ARMS = ("ours", "dynamo_kv", "dynamo_kv_port", "round_robin", "dynamo_kv_affinity")
AFFINITY_TTL_S = 300.0  # how long a session stays bound to its worker without a request


@dataclass(frozen=True)
class TraceFile:
    """A trace both as our requests and as the file Dynamo's replay would read."""

    path: Path
    fmt: str  # "mooncake" | "agentic"
    requests: list[TraceRequest]
    limit: int | None = None


DYNAMO_FORMAT = {"mooncake": "mooncake", "agentic": "agentic_mooncake"}


def dynamo_can_run(trace: TraceFile, cluster: ClusterConfig) -> bool:
    """Dynamo's replay takes one engine config for all workers; it slices only Mooncake."""
    homogeneous = len({cluster.worker_speed(w) for w in range(cluster.num_workers)}) == 1
    return homogeneous and (trace.limit is None or trace.fmt == "mooncake")


def run_arm(
    arm: str, trace: TraceFile, cluster: ClusterConfig, seed: int = 0, progress: bool = False
) -> tuple[list[RequestRecord], str]:
    """Replay one arm; returns its records and which engine ran it ("dynamo" or "ours")."""
    if arm in ("dynamo_kv", "round_robin") and dynamo_can_run(trace, cluster):
        mode = "kv_router" if arm == "dynamo_kv" else "round_robin"
        records = dynamo_ref.run_dynamo_replay(
            trace.path, cluster, mode, trace_format=DYNAMO_FORMAT[trace.fmt], limit=trace.limit
        )
        return records, "dynamo"
    if arm == "ours":
        policy = OursPolicy(router_config(cluster, seed), cluster.block_size)
    elif arm in ("dynamo_kv", "dynamo_kv_port"):
        policy = KvPortPolicy(seed=seed)
    elif arm == "round_robin":
        policy = RoundRobinPolicy()
    elif arm == "dynamo_kv_affinity":
        policy = KvAffinityPolicy(seed=seed, ttl_s=AFFINITY_TTL_S)
    else:
        raise ValueError(f"unknown arm {arm!r}; expected one of {', '.join(ARMS)}")
    return run_replay(trace.requests, cluster, policy, progress=progress), "ours"
