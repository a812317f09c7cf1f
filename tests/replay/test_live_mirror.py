"""The replay mirror of a live workload: the sessions as the live driver sends them, and the
same reuse as the committed live run of that workload."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from benchmarks.replay.cluster import ClusterConfig
from benchmarks.replay.live_mirror import figures, live_trace, pooled_tail, replay_arms
from benchmarks.replay.trace import TraceRequest
from benchmarks.workloads import BLOCK_SIZE

LIVE = Path(__file__).resolve().parents[2] / "benchmarks/results/routing_pressure.json"
SEED = 1


@pytest.fixture(scope="module")
def pressure() -> tuple[list[TraceRequest], ClusterConfig]:
    return live_trace("agentic_pressure", SEED)


def test_turns_wait_for_their_previous_answer_and_extend_its_prompt(pressure) -> None:
    trace, cluster = pressure
    assert cluster.num_workers == 4 and cluster.num_gpu_blocks == 512
    by_session: dict[str, list[TraceRequest]] = {}
    for r in trace:
        by_session.setdefault(r.session_id, []).append(r)
    assert len(by_session) == 120
    for turns in by_session.values():
        assert turns[0].parent is None and turns[0].delay_ms == 0.0
        for prev, nxt in pairwise(turns):
            assert nxt.parent == prev.index and nxt.delay_ms >= 1000.0  # tool gaps of 1-10 s
            full = prev.input_length // BLOCK_SIZE
            assert nxt.hash_ids[:full] == prev.hash_ids[:full]  # the history is a prefix
            assert nxt.hints.prefix_id == prev.session_id and nxt.hints.iat_ms is not None


def test_reuse_matches_the_live_run(pressure) -> None:
    trace, cluster = pressure
    live = json.loads(LIVE.read_text())["meta"]["workloads"]["agentic_pressure"]
    arms = next(s["arms"] for s in live["per_seed"] if s["seed"] == SEED)
    res = {arm: figures(r) for arm, r in replay_arms(trace, cluster, SEED).items()}
    assert res["ours"]["reuse"] == pytest.approx(arms["ours"]["kv_hit_ratio"], abs=0.03)
    assert res["dynamo_kv"]["reuse"] == pytest.approx(arms["dynamo_kv"]["kv_hit_ratio"], abs=0.03)


def test_pooled_tail_compares_the_slowest_requests_of_all_seeds() -> None:
    kv = np.array([100.0] * 990 + [1000.0] * 10)  # a tail of ten long recomputes
    ours = np.array([100.0] * 990 + [500.0] * 10)  # the same requests, the tail halved
    out = pooled_tail(ours, kv)
    assert out["p90"] == pytest.approx(1.0)
    assert out["p99.5"] == pytest.approx(0.5)
    assert out["slowest_1pct_mean"] == pytest.approx(0.5)
