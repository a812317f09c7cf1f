"""The pooled-cache bound's policies evict what they say (toy sequences, no stack)."""

from __future__ import annotations

from benchmarks.pressure_bound import LONG, simulate


def _req(session: str, t: float, blocks: list[str]) -> dict:
    return {
        "session": session,
        "t": t,
        "chain": [b.encode() for b in blocks],
        "prompt": max(LONG, 64 * len(blocks)),
    }


def test_lru_loses_a_returning_conversation_that_belady_keeps() -> None:
    # a returns after b and c passed through a 4-block cache; c never comes back.
    reqs = [
        _req("a", 0.0, ["a1", "a2"]),
        _req("b", 1.0, ["b1", "b2"]),
        _req("c", 2.0, ["c1", "c2"]),
        _req("a", 3.0, ["a1", "a2"]),
    ]
    totals = {"a": 2, "b": 1, "c": 1}
    iats = {"a": 3000, "b": 1000, "c": 1000}
    _, long_lru = simulate(reqs, 4, "lru", totals, iats)
    reuse_b, long_b = simulate(reqs, 4, "belady", totals, iats)
    _, long_fin = simulate(reqs, 4, "finished_first", totals, iats)
    _, long_due = simulate(reqs, 4, "due_last", totals, iats)
    assert long_lru == 4  # every request recomputes
    assert long_b == 3 and reuse_b > 0  # a's second turn hits
    assert long_fin == 3  # b finished: its blocks go first
    assert long_due == 3  # a is the only conversation due back
