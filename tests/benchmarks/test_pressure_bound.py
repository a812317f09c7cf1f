"""The pooled-cache bound's policies evict what they say (toy sequences, no stack)."""

from __future__ import annotations

from benchmarks.pressure_bound import LONG, simulate
from benchmarks.workloads import BLOCK_SIZE


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


def test_value_keeps_the_long_context_that_due_last_evicts() -> None:
    # L (long) is due back after S and X (short); the cache lacks one block when X arrives.
    k = LONG // BLOCK_SIZE + 1
    long_chain = [f"l{i}".encode() for i in range(k)]

    def req(session: str, t: float, chain: list[bytes]) -> dict:
        return {"session": session, "t": t, "chain": chain, "prompt": BLOCK_SIZE * len(chain)}

    reqs = [
        req("L", 0.0, long_chain),
        req("S", 0.5, [b"s1"]),
        req("X", 1.0, [b"x1"]),
        req("L", 4.0, [*long_chain, b"l+"]),
    ]
    totals = {"L": 2, "S": 2, "X": 2}
    iats = {"L": 4000, "S": 1000, "X": 1000}
    reuse_due, long_due = simulate(reqs, k + 1, "due_last", totals, iats)
    reuse_v, long_v = simulate(reqs, k + 1, "value", totals, iats)
    assert long_due == 2  # due_last drops a block of L, the conversation due back last
    assert long_v == 1 and reuse_v > reuse_due  # L's return hits: a short one went instead
