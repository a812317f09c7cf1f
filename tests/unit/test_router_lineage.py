"""Lineage: an extension continues its conversation, a shared prefix merges nothing, bounded."""

from __future__ import annotations

import itertools

from processor.routing import chain_hashes
from router.lineage import MAX_TAIL_HASHES, Lineage

BS = 64  # tokens per block; slack 512 tokens = 8 blocks
_fresh = itertools.count(1_000_000)


def blocks(n: int) -> list[int]:
    """``n`` blocks of content no other prompt has."""
    return [next(_fresh) for _ in range(n)]


def turn(lin: Lineage, prompt: list[int], now: float) -> tuple[str, int]:
    chain = chain_hashes(prompt)
    return lin.record(chain, lin.find(chain, now), now)


def test_extension_continues_the_conversation() -> None:
    lin = Lineage(BS)
    system = blocks(20)
    first = system + blocks(30)
    key, n = turn(lin, first, 0.0)
    assert n == 1
    second = first + blocks(15)
    assert turn(lin, second, 5.0) == (key, 2)
    # A re-rendered tail (last 3 blocks differ, within the slack) still continues.
    third = second[:-3] + blocks(40)
    assert turn(lin, third, 9.0) == (key, 3)
    assert lin.continued == 2 and lin.started == 1
    assert lin.gap_s is not None and 4.0 <= lin.gap_s <= 5.0


def test_shared_system_prompt_does_not_merge() -> None:
    lin = Lineage(BS)
    system = blocks(40)  # far longer than the slack
    keys = {turn(lin, system + blocks(25), float(i))[0] for i in range(50)}
    assert len(keys) == 50 and lin.continued == 0
    # A short shared prefix (within the first slack, like Mooncake's one 512-token system
    # block) plus one block of its own: a newcomer sharing only that prefix starts its own.
    short = blocks(6)
    short_key, _ = turn(lin, short + blocks(1), 100.0)
    other, n = turn(lin, short + blocks(10), 101.0)
    assert n == 1 and other != short_key


def test_fork_within_the_tail_continues() -> None:
    lin = Lineage(BS)
    base = blocks(30)
    a, _ = turn(lin, base, 0.0)
    b, n = turn(lin, base[:-2] + blocks(2), 1.0)  # a fork within a's tail: continues a
    assert b == a and n == 2
    c, _ = turn(lin, base[:-2] + blocks(3), 2.0)  # the same point again: continues a again
    assert c == a


def test_bounded_by_count_and_idle_time() -> None:
    lin = Lineage(BS, max_conversations=100, idle_ttl_s=60.0)
    for i in range(1000):
        turn(lin, blocks(50), float(i) * 0.01)
    assert len(lin) == 100 and lin.evictions == 900
    assert lin.indexed_blocks() <= 100 * MAX_TAIL_HASHES
    # An evicted conversation is forgotten: its extension starts a new one.
    lin2 = Lineage(BS, max_conversations=2)
    p = blocks(20)
    k, _ = turn(lin2, p, 0.0)
    turn(lin2, blocks(20), 1.0)
    turn(lin2, blocks(20), 2.0)
    assert turn(lin2, p + blocks(5), 3.0)[0] != k
    # Idle past the TTL: no continuation, and later records drop idle entries.
    lin3 = Lineage(BS, idle_ttl_s=60.0)
    q = blocks(20)
    k3, _ = turn(lin3, q, 0.0)
    assert turn(lin3, q + blocks(5), 61.0)[0] != k3
    for t in range(20):
        turn(lin3, blocks(20), 200.0 + t)
    assert len(lin3) == 20  # the two idle ones are gone


def test_tail_hashes_per_conversation_are_capped() -> None:
    lin = Lineage(16)  # slack 32 blocks: strided down to MAX_TAIL_HASHES
    first = blocks(100)
    key, _ = turn(lin, first, 0.0)
    assert lin.indexed_blocks() <= MAX_TAIL_HASHES
    assert turn(lin, first[:-5] + blocks(50), 1.0)[0] == key
