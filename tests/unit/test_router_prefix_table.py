"""Prefix table: reuse budget, pins, idle TTL, LRU cap, reserved totals, bounded memory."""

from __future__ import annotations

import gc
import resource
import tracemalloc
import uuid

import numpy as np

from router.prefix_table import PrefixTable


def test_reuse_budget_counts_down_and_releases() -> None:
    t = PrefixTable()
    e = t.observe("conv", worker_id=1, now=0.0, total_requests=3, blocks=10)
    assert e is not None and e.remaining == 2 and e.home == 1
    e = t.observe("conv", worker_id=2, now=1.0, total_requests=3, blocks=12)
    assert e is not None and e.remaining == 1 and e.home == 2 and e.blocks == 12
    assert t.observe("conv", worker_id=2, now=2.0, total_requests=3, blocks=14) is None
    assert "conv" not in t and t.expirations == 1


def test_single_shot_prefix_is_not_stored() -> None:
    t = PrefixTable()
    assert t.observe("once", 1, 0.0, total_requests=1, blocks=5) is None
    assert len(t) == 0


def test_pin_keeps_exhausted_prefix_and_reserves_blocks_until_expiry() -> None:
    t = PrefixTable()
    e = t.observe("p", 7, now=0.0, total_requests=1, blocks=40, pin_ttl_s=30.0)
    assert e is not None and e.pinned(10.0)
    assert t.reserved_by_worker().get(7, 0) == 40
    assert t.get("p", 20.0) is e  # still pinned
    assert t.sweep(29.0) == 0 and t.reserved_by_worker().get(7, 0) == 40
    assert t.sweep(31.0) == 1  # timer due, budget 0 -> removed
    assert "p" not in t and t.reserved_by_worker().get(7, 0) == 0


def test_last_expected_request_releases_a_pin_at_once() -> None:
    """A client that said how many requests come is done after the last: its pin (which
    would hold to the TTL) is released with the entry."""
    t = PrefixTable()
    t.observe("p", 7, 0.0, total_requests=2, blocks=40, pin_ttl_s=300.0)
    assert t.reserved_by_worker().get(7, 0) == 40
    assert t.observe("p", 7, 5.0, total_requests=2, blocks=50, pin_ttl_s=300.0) is None
    assert "p" not in t and t.reserved_by_worker().get(7, 0) == 0


def test_soft_claim_reserves_the_home_until_the_return_is_overdue() -> None:
    t = PrefixTable()
    t.observe("c", 3, 0.0, total_requests=5, blocks=20, claim_s=12.0)
    assert t.reserved_by_worker().get(3, 0) == 20
    assert t.claims == 1  # counted in the claims gauge without a pin
    t.observe("c", 4, 10.0, total_requests=5, blocks=25, claim_s=12.0)  # moves, extends
    assert t.reserved_by_worker().get(3, 0) == 0 and t.reserved_by_worker().get(4, 0) == 25
    t.sweep(13.0)  # first timer pops; the claim now runs to 22 -> re-armed
    assert t.reserved_by_worker().get(4, 0) == 25
    t.sweep(23.0)  # overdue: the claim goes, the conversation stays live (budget left)
    assert "c" in t and t.reserved_by_worker().get(4, 0) == 0 and t.claims == 0


def test_pin_extension_rearms_timer_and_move_transfers_reservation() -> None:
    t = PrefixTable()
    t.observe("p", 1, 0.0, total_requests=10, blocks=20, pin_ttl_s=10.0)
    t.observe("p", 2, 5.0, total_requests=10, blocks=30, pin_ttl_s=10.0)  # moves, extends
    assert t.reserved_by_worker().get(1, 0) == 0 and t.reserved_by_worker().get(2, 0) == 30
    t.sweep(11.0)  # first timer pops but the pin now runs to 15 -> re-armed
    assert t.reserved_by_worker().get(2, 0) == 30
    t.sweep(16.0)  # pin gone, budget remains -> entry stays, reservation released
    assert "p" in t and t.reserved_by_worker().get(2, 0) == 0


def test_lazy_expiry_on_access_releases_reservation() -> None:
    t = PrefixTable()
    t.observe("p", 3, 0.0, total_requests=5, blocks=8, pin_ttl_s=2.0)
    e = t.get("p", 3.0)  # pin expired, budget left: live but unpinned
    assert e is not None and not e.pinned(3.0) and t.reserved_by_worker().get(3, 0) == 0


def test_idle_ttl_expires_unpinned_entries_via_sweep_and_lazily() -> None:
    t = PrefixTable(idle_ttl_s=100.0)
    t.observe("a", 1, 0.0, total_requests=5, blocks=1)
    t.observe("b", 1, 50.0, total_requests=5, blocks=1)
    t.observe("c", 1, 0.0, total_requests=5, blocks=1, pin_ttl_s=500.0)
    assert t.get("a", 101.0) is None  # lazy
    assert t.sweep(151.0) == 1  # b idle; c pinned, kept
    assert len(t) == 1 and "c" in t


def test_sweep_is_bounded_per_call() -> None:
    t = PrefixTable(idle_ttl_s=10.0, sweep_batch=100)
    for i in range(1000):
        t.observe(f"p{i}", i % 4, 0.0, total_requests=5, blocks=1)
    assert t.sweep(100.0) == 100
    assert len(t) == 900
    for _ in range(9):
        t.sweep(100.0)
    assert len(t) == 0


def test_lru_cap_evicts_oldest_and_counts() -> None:
    t = PrefixTable(max_entries=3)
    for i, name in enumerate("abcd"):
        t.observe(name, 1, float(i), total_requests=5, blocks=1)
    assert len(t) == 3 and "a" not in t and t.evictions == 1
    t.observe("b", 1, 10.0, total_requests=5, blocks=1)  # touch b -> c is now oldest
    t.observe("e", 1, 11.0, total_requests=5, blocks=1)
    assert "c" not in t and "b" in t and t.evictions == 2


def test_reserved_totals_match_brute_force_under_random_operations() -> None:
    """O(1) bookkeeping == recomputation from the entries, after every operation."""
    rng = np.random.default_rng(3)
    t = PrefixTable(max_entries=50, idle_ttl_s=30.0, sweep_batch=7)
    now = 0.0
    for step in range(5000):
        now += float(rng.exponential(0.2))
        op = rng.random()
        key = f"p{rng.integers(0, 80)}"
        if op < 0.7:
            t.observe(
                key,
                int(rng.integers(0, 5)),
                now,
                int(rng.integers(1, 6)),
                int(rng.integers(1, 100)),
                float(rng.choice([0.0, 1.0, 5.0, 20.0])) or None,
            )
        elif op < 0.85:
            t.get(key, now)
        elif op < 0.95:
            t.sweep(now)
        else:
            t.remove(key)
        expected: dict[int, int] = {}
        for e in t._entries.values():
            if e.reserved:
                expected[e.home] = expected.get(e.home, 0) + e.reserved
        assert t.reserved_by_worker() == expected, step
        assert len(t) <= 50
    # Every reservation belongs to a pinned-at-some-point entry; after all pins lapse and a
    # few sweeps, nothing is reserved.
    for _ in range(50):
        t.sweep(now + 1000.0)
    assert t.reserved_by_worker() == {}


def _fill(t: PrefixTable, start: int, n: int, keys: list[str]) -> None:
    for i in range(start, start + n):
        t.observe(keys[i - start], i & 7, float(i) * 1e-3, total_requests=10, blocks=i & 63)


def test_bytes_per_entry_measured() -> None:
    """Documents the number quoted in router/prefix_table.py's docstring (~300 B)."""
    n = 50_000
    keys = [str(uuid.uuid4()) for _ in range(n)]  # 36-char ids, like real session ids
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t = PrefixTable(max_entries=n)
    _fill(t, 0, n, keys)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_entry = (after - before) / n
    # Keys were allocated before tracing: add their size so the figure is "per new prefix".
    per_entry += sum(len(k) for k in keys[:100]) / 100 + 49
    print(f"prefix table: {per_entry:.0f} bytes per entry")
    assert 150 < per_entry < 500


def test_one_million_distinct_prefixes_stay_bounded() -> None:
    """1M distinct conversations through a table capped at 10k: the size stays at the cap,
    traced memory stops growing once the cap is reached (tracemalloc over 150k churned
    prefixes; tracing all 1M would take minutes), and process peak RSS grows by less than
    the 1M entries would need (~250 MB at ~250 B each) over the full million."""
    cap = 10_000
    t = PrefixTable(max_entries=cap)
    observe = t.observe
    gc.collect()
    tracemalloc.start()
    for i in range(cap):  # reach the cap
        observe(f"conv-{i:07d}", i & 7, i * 1e-4, 10, 5)
    at_cap = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    for i in range(cap, 160_000):
        observe(f"conv-{i:07d}", i & 7, i * 1e-4, 10, 5)
    end, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Only the dict's deleted-slot churn between resizes may come on top of the at-cap size.
    assert end < 1.5 * at_cap, (at_cap, end)
    assert peak < 2.0 * at_cap, (at_cap, peak)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for i in range(160_000, 1_000_000):
        observe(f"conv-{i:07d}", i & 7, i * 1e-4, 10, 5)
        if i % 100_000 == 0:
            t.sweep(i * 1e-4)
    rss_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert len(t) == cap
    assert t.evictions == 1_000_000 - cap
    assert rss_growth_mib < 25, rss_growth_mib
    print(
        f"1M prefixes: {at_cap / cap:.0f} B/entry at cap, traced end {end} B, peak {peak} B,"
        f" peak RSS growth {rss_growth_mib:.1f} MiB"
    )
