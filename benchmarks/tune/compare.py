"""The comparison the report leads with: tuned and default settings of both routers, replayed
on the held-back part that no trial saw (same cluster, same seed)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from benchmarks.replay.cluster import ClusterConfig
from benchmarks.replay.trace import TraceRequest
from benchmarks.tune.objective import Slo, figures, replay

ARMS = ("tuned_ours", "default_ours", "tuned_kv", "default_kv")


def _one(
    router: str,
    values: dict[str, Any],
    trace: list[TraceRequest],
    cluster: ClusterConfig,
    seed: int,
    slos: tuple[Slo, ...],
) -> dict:
    records = replay(router, values, trace, cluster, seed)
    return figures(records, cluster.num_workers, slos)


def heldout(
    settings: dict[str, tuple[str, dict[str, Any]]],
    trace: list[TraceRequest],
    cluster: ClusterConfig,
    seed: int,
    slos: tuple[Slo, ...],
    jobs: int,
) -> dict[str, dict]:
    """Figures per arm; ``settings`` maps each arm to (router, setting values)."""
    if jobs <= 1:
        return {arm: _one(r, v, trace, cluster, seed, slos) for arm, (r, v) in settings.items()}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(settings)), mp_context=ctx) as pool:
        futures = {
            arm: pool.submit(_one, r, v, trace, cluster, seed, slos)
            for arm, (r, v) in settings.items()
        }
        return {arm: f.result() for arm, f in futures.items()}
