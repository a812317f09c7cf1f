"""benchmarks.oracle_bound: the cache-perfect TTFT an arm would have had at its own path."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.oracle_bound import bound, table


def _rec(arm: str, prompt: int, cached: int, ideal: int, ttft: float, status: int = 200) -> dict:
    return {
        "workload": "w",
        "arm": arm,
        "status": status,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "ideal_cached_tokens": ideal,
        "ttft_ms": ttft,
    }


def test_fit_recovers_the_cost_of_an_uncached_token_and_takes_only_the_excess_off() -> None:
    rng = np.random.default_rng(7)
    recs = []
    for _ in range(200):
        prompt = int(rng.integers(1000, 5000))
        ideal = int(rng.integers(0, prompt))
        cached = int(rng.integers(0, prompt))  # below or above the ideal
        ttft = 10.0 + 20.0 * (prompt - cached) / 1000
        recs.append(_rec("dynamo_kv", prompt, cached, ideal, ttft))
    recs.append(_rec("dynamo_kv", 4000, 0, 3000, 9999.0, status=500))  # failures are left out
    s = bound(recs)[("w", "dynamo_kv")]
    assert s["n"] == 200
    assert s["intercept_ms"] == pytest.approx(10.0) and s["slope_ms_per_1k"] == pytest.approx(20.0)
    # Cache-perfect: a request that lost cache is charged its ideal uncached tokens; one that
    # cached more than the ideal keeps its measured TTFT (never made slower).
    perfect = [
        10.0
        + 20.0 * (r["prompt_tokens"] - max(r["cached_tokens"], r["ideal_cached_tokens"])) / 1000
        for r in recs[:200]
    ]
    assert s["perfect"][50] == pytest.approx(float(np.percentile(perfect, 50)))
    assert s["perfect"][99] <= s["ttft"][99]
    excess = np.mean([max(r["ideal_cached_tokens"] - r["cached_tokens"], 0) for r in recs[:200]])
    assert s["excess_uncached_mean"] == pytest.approx(excess)


def test_ratios_are_to_the_kv_arms_measured_ttft_in_the_same_workload() -> None:
    recs = [_rec("dynamo_kv", 1000, 0, 0, t) for t in (40.0, 40.0, 40.0)]
    # Ours: 500, 400 and 300 tokens of cache lost at 20 ms per 1k -> 10, 8 and 6 ms lower.
    recs += [_rec("ours", 1000, c, 500, 30.0 + 20.0 * (1000 - c) / 1000) for c in (0, 100, 200)]
    stats = bound(recs)
    assert stats[("w", "dynamo_kv")]["slope_ms_per_1k"] == 0.0  # no spread in x: flat line
    ours = stats[("w", "ours")]
    assert ours["perfect"][50] == pytest.approx(ours["ttft"][50] - 20.0 * 0.4)
    row = next(line for line in table(stats).splitlines() if "| ours |" in line)
    assert f"{ours['perfect'][50] / 40.0:.2f}x" in row
