"""The comparison the report leads with: tuned and default settings of both routers, replayed
on the held-back part that no trial saw (same cluster, same seeds).

Why several seeds: our learner samples and Dynamo's KV router breaks ties (and, with a
temperature, samples) at random, so one replay per arm can differ by chance by about as much
as tuning gains. Each arm's figures are the mean over the seeds; the per-seed objective is
kept to show the spread.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

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


def _mean(runs: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def heldout(
    settings: dict[str, tuple[str, dict[str, Any]]],
    trace: list[TraceRequest],
    cluster: ClusterConfig,
    seeds: list[int],
    slos: tuple[Slo, ...],
    jobs: int,
) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """(mean figures per arm, figures per arm and seed); ``settings`` maps each arm to
    (router, setting values)."""
    tasks = [(arm, seed) for arm in settings for seed in seeds]
    if jobs <= 1:
        done = {t: _one(*settings[t[0]], trace, cluster, t[1], slos) for t in tasks}
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx) as pool:
            futures = {
                t: pool.submit(_one, *settings[t[0]], trace, cluster, t[1], slos) for t in tasks
            }
            done = {t: f.result() for t, f in futures.items()}
    runs = {arm: [done[(arm, s)] for s in seeds] for arm in settings}
    return {arm: _mean(r) for arm, r in runs.items()}, runs
