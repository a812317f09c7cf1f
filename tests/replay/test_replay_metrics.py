"""The reuse references and the per-arm figures, on hand-made records."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from benchmarks.replay.metrics import (
    hits_offline,
    hits_pooled,
    reuse_ideal,
    reuse_pooled,
    summarize,
)
from benchmarks.replay.records import RequestRecord

BS = 64


def _prompt(*blocks: int) -> tuple[int, np.ndarray]:
    return len(blocks) * BS, np.array(blocks, dtype=np.uint64)


def test_ideal_counts_the_longest_cached_prefix_only() -> None:
    prompts = [_prompt(1, 2, 3), _prompt(1, 2, 9), _prompt(7, 2, 3)]
    # second request reuses blocks 1, 2; the third shares no leading block.
    assert reuse_ideal(prompts, BS) == pytest.approx(2 / 9)


def test_pooled_cache_forgets_least_recently_used_blocks() -> None:
    prompts = [_prompt(1, 2), _prompt(3, 4), _prompt(1, 2)]
    assert reuse_pooled(prompts, BS, capacity_blocks=4) == pytest.approx(2 / 6)
    # two blocks of room: 1 and 2 were evicted by 3 and 4 before they came back.
    assert reuse_pooled(prompts, BS, capacity_blocks=2) == 0.0
    assert reuse_pooled(prompts, BS, capacity_blocks=4) <= reuse_ideal(prompts, BS)


def _rec(i: int, worker: int, ttft: float, reused: int) -> RequestRecord:
    return RequestRecord(
        index=i,
        request_id=f"r{i}",
        session_id=None,
        worker=worker,
        arrival_ms=i * 1000.0,
        first_token_ms=i * 1000.0 + ttft,
        finish_ms=i * 1000.0 + ttft + 100.0,
        ttft_ms=ttft,
        itl_ms=10.0,
        e2e_ms=ttft + 100.0,
        input_length=1000,
        output_length=10,
        reused_tokens=reused,
    )


def test_summary_goodput_reuse_and_imbalance() -> None:
    recs = [_rec(0, 0, 100.0, 500), _rec(1, 0, 3000.0, 0), _rec(2, 1, 200.0, 1000)]
    fig = summarize(recs, num_workers=2, slo_ttft_ms=2000.0)
    assert fig["requests"] == 3
    assert fig["reuse"] == pytest.approx(1500 / 3000)
    assert fig["goodput_frac"] == pytest.approx(2 / 3)
    span_s = (1000.0 + 3000.0 + 100.0) / 1000.0  # first arrival to the last finish
    assert fig["goodput"] == pytest.approx(2 / span_s)
    # worker 0 computed 500 + 10 + 1000 + 10, worker 1 computed 0 + 10 tokens.
    assert fig["imbalance"] == pytest.approx(1520 / ((1520 + 10) / 2))
    assert fig["ttft_p50_ms"] == pytest.approx(200.0)


def test_headline_reads_ours_against_kv_as_ratios() -> None:
    from benchmarks.replay.report import headline

    fig = {"ttft_p50_ms": 100.0, "ttft_p90_ms": 200.0, "ttft_p99_ms": 400.0, "goodput": 2.0}
    suite = {
        "agentic": {
            "8": {
                "ours": {**fig, "ttft_p90_ms": 100.0, "reuse": 0.4, "reuse_pooled_bound": 0.5},
                "dynamo_kv": {**fig, "reuse": 0.3, "engine": "dynamo"},
            }
        }
    }
    row = headline(suite).splitlines()[-1]
    assert row.startswith("| agentic | 8 | 1.00x | 0.50x | 1.00x | 1.00x | 0.400 / 0.300 | 0.500")
    assert row.endswith("Dynamo's replay |")


def _most_hits(refs: list[int], capacity: int) -> int:
    """Exhaustive: the most block hits of any cache of ``capacity`` blocks over ``refs``."""
    from itertools import combinations

    @functools.cache
    def best(i: int, held: frozenset[int]) -> int:
        if i == len(refs):
            return 0
        b = refs[i]
        if b in held:
            return 1 + best(i + 1, held)
        out = best(i + 1, held)  # not kept
        keep = max(0, len(held) + 1 - capacity)
        for evicted in combinations(sorted(held), keep):
            out = max(out, best(i + 1, (held - set(evicted)) | {b}))
        return out

    return best(0, frozenset())


def test_offline_cache_holds_the_most_any_cache_of_its_size_can() -> None:
    rng = np.random.default_rng(7)
    for _ in range(60):
        prompts = [_prompt(*rng.integers(0, 6, size=rng.integers(1, 4)).tolist()) for _ in range(5)]
        capacity = int(rng.integers(1, 4))
        refs = [b for _, blocks in prompts for b in blocks.tolist()]
        offline = hits_offline(prompts, BS, capacity)
        assert offline.sum() == _most_hits(refs, capacity) * BS
        assert offline.sum() >= hits_pooled(prompts, BS, capacity).sum()
