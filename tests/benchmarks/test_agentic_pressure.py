"""The live pressure workload holds what the issue asks of it, and the per-seed report flags a
seed over its bound; no stack runs."""

from __future__ import annotations

import pytest

from benchmarks.routing import per_seed_rows, per_seed_targets
from benchmarks.workloads import BLOCK_SIZE, build


@pytest.fixture(scope="module")
def workload():  # type: ignore[no-untyped-def]
    return build("agentic_pressure", 1, 1.0)


def test_cluster_is_four_workers_of_512_blocks(workload) -> None:  # type: ignore[no-untyped-def]
    assert workload.speeds == [1.0] * 4
    assert workload.gpu_blocks == 512
    assert workload.scaling["cluster_kv_blocks"] == 2048


def test_live_context_exceeds_the_cluster_kv(workload) -> None:  # type: ignore[no-untyped-def]
    # Even with every agent type's system prompt counted once, the planned live context is
    # well above 4 x 512 blocks.
    assert workload.scaling["peak_live_distinct_blocks_estimate"] >= 1.3 * 2048
    assert (
        workload.scaling["peak_live_blocks_estimate"]
        >= workload.scaling["peak_live_distinct_blocks_estimate"]
    )


def test_about_thirty_sessions_are_live(workload) -> None:  # type: ignore[no-untyped-def]
    spans = []
    for s in workload.sessions:
        end = s.start_s + sum(t.gap_s for t in s.turns) + 0.5 * len(s.turns)
        spans.append((s.start_s, end))
    live_at_60s = sum(1 for a, b in spans if a <= 60.0 < b)
    assert 25 <= live_at_60s <= 50


def test_tool_gaps_of_seconds_and_contexts_to_14k(workload) -> None:  # type: ignore[no-untyped-def]
    gaps = [t.gap_s for s in workload.sessions for t in s.turns[1:]]
    assert min(gaps) >= 1.0 and max(gaps) <= 10.0
    assert sum(g >= 5.0 for g in gaps) / len(gaps) >= 0.1
    prompts = [t.prompt_tokens for s in workload.sessions for t in s.turns]
    assert 12_000 <= max(prompts) <= 15_000
    assert max(prompts) // BLOCK_SIZE < 512  # one conversation fits one worker
    assert all(
        t.hints and t.hints["prefix_id"] == s.session_id for s in workload.sessions for t in s.turns
    )


def _summary(p99: float, hit: float) -> dict:
    return {
        "ttft_p50_ms": 10.0,
        "ttft_p90_ms": 20.0,
        "ttft_p99_ms": p99,
        "kv_hit_ratio": hit,
        "failed": 0,
    }


def test_per_seed_report_flags_a_seed_over_its_bound() -> None:
    per_repeat = {
        "ours": [_summary(80.0, 0.6), _summary(120.0, 0.6)],
        "dynamo_kv": [_summary(100.0, 0.5), _summary(100.0, 0.5)],
    }
    load = {"load": {"cpu_busy_arm": 0.8, "loadavg_start": [1, 1, 1], "loadavg_end": [2, 1, 1]}}
    extra = {"ours": [load, load], "dynamo_kv": [load, load]}
    rows = per_seed_rows([7, 8], per_repeat, extra)
    assert [r["seed"] for r in rows] == [7, 8]
    assert rows[0]["ratios"]["ttft_p99_ms"] == 0.8
    assert rows[1]["ratios"]["kv_hit_ratio"] == 1.2
    assert rows[0]["arms"]["ours"]["load"]["cpu_busy_arm"] == 0.8
    met = [t["met"] for t in per_seed_targets("agentic_pressure", rows)]
    assert met == [True, False]
