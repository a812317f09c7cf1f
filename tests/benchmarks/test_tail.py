"""benchmarks.tail: the requests at or above an arm's p99, sorted by cache outcome."""

from __future__ import annotations

from benchmarks.tail import outcome, table, tails


def _rec(arm: str, ttft: float, cached: int, ideal: int, status: int = 200) -> dict:
    return {
        "workload": "w",
        "arm": arm,
        "status": status,
        "ttft_ms": ttft,
        "cached_tokens": cached,
        "ideal_cached_tokens": ideal,
    }


def test_outcome_tells_cold_starts_lost_caches_and_hits_apart() -> None:
    assert outcome(_rec("a", 1.0, 0, 0)) == "cold"
    assert outcome(_rec("a", 1.0, 0, 3328)) == "lost"
    assert outcome(_rec("a", 1.0, 2900, 3328)) == "lost"  # under 90% of the ideal
    assert outcome(_rec("a", 1.0, 3000, 3328)) == "hit"


def test_tail_is_the_requests_at_or_above_the_pooled_percentile() -> None:
    # 100 fast hits and 3 slow requests of each kind; failures are not part of it.
    recs = [_rec("a", 20.0 + i * 0.1, 1000, 1000) for i in range(100)]
    recs += [
        _rec("a", 90.0, 0, 0),
        _rec("a", 100.0, 0, 3000),
        _rec("a", 95.0, 3000, 3000),
        _rec("a", 500.0, 0, 0, status=500),
    ]
    s = tails(recs, q=97.5)[("w", "a")]
    assert s["n"] == 103
    assert [r["ttft_ms"] for r in s["tail"]] == [100.0, 95.0, 90.0]
    assert dict(s["classes"]) == {"lost": 1, "hit": 1, "cold": 1}
    assert "| 1 / 1 / 1 | 100 lost 0/3000, 95 hit 3000/3000, 90 cold 0/0 |" in table(
        {("w", "a"): s}
    )
