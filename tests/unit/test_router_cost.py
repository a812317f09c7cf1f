"""Score terms: Dynamo's cost when the extras are off, additivity of load, bounded affinity,
eviction cost."""

from __future__ import annotations

import numpy as np
import pytest

from router import cost
from router.config import RouterConfig
from router.policy import Router, RouteRequest
from router.signals import WorkerSignals

BS = 64
BLOCK_MS = RouterConfig().prefill_ms_per_token * BS


def _random_fleet(rng: np.random.Generator, w: int, prompt: int) -> dict[str, np.ndarray]:
    """Consistent Dynamo-like signals: potential prefill = uncached(overlap) + queued."""
    overlap = rng.integers(0, prompt // BS + 1, size=w).astype(float)
    overlap[rng.random(w) < 0.4] = 0.0
    queued = rng.integers(0, 20_000, size=w).astype(float) * (rng.random(w) < 0.7)
    uncached = np.maximum(prompt - overlap * BS, 0)
    return {
        "overlap_blocks": overlap,
        "potential_prefill_tokens": uncached + queued,
        "decode_blocks": rng.integers(0, 3000, size=w).astype(float),
        "active_requests": rng.integers(0, 40, size=w).astype(float),
        "queued": queued,
    }


def _terms(
    cfg: RouterConfig,
    f: dict[str, np.ndarray],
    prompt: int,
    *,
    home: int = -1,
    remaining_requests: int = 0,
    pinned: bool = False,
    reserved: np.ndarray | None = None,
    capacity: np.ndarray | None = None,
    learned: np.ndarray | None = None,
) -> cost.Terms:
    w = f["overlap_blocks"].shape[0]
    signals = WorkerSignals.build(
        range(w),
        overlap_blocks=f["overlap_blocks"],
        potential_prefill_tokens=f["potential_prefill_tokens"],
        decode_blocks=f["decode_blocks"],
        capacity_blocks=capacity if capacity is not None else np.full(w, 4096.0),
    )
    uncached, queued = cost.split_prefill(
        prompt, f["overlap_blocks"], f["potential_prefill_tokens"], BS
    )
    terms = cost.breakdown(
        cfg,
        BS,
        signals,
        uncached=uncached,
        queued=queued,
        overlap_blocks=f["overlap_blocks"],
        claimed_blocks=reserved if reserved is not None else np.zeros(w),
        request_blocks=0,
        home=home,
        reuse=cost.reuse_factor(remaining_requests, pinned),
    )
    if learned is not None:
        terms["learned_ms"] = learned
    return terms


def test_score_is_dynamos_default_cost_in_ms_with_the_extras_off() -> None:
    """1000 random fleets: with decode_block_weight 1, a linear prefill (prefill_chunk_tokens
    0) and affinity, learner, pins and the KV-full term off, the score is one block's prefill
    time x Dynamo's default cost (potential prefill blocks + decode blocks), so the argmin is
    the same worker -- via the terms and end to end through Router.decide. The real
    KvRouter.best_worker is checked in tests/integration/test_dynamo_equivalence.py."""
    cfg = RouterConfig(
        affinity_weight=0.0,
        bandit_enabled=False,
        seed=0,
        decode_block_weight=1.0,
        affinity_cap_ms=1e12,  # no tail guard
        prefill_chunk_tokens=0,  # prefill linear in tokens, as Dynamo's cost
    )
    router = Router(cfg, BS)
    rng = np.random.default_rng(1)
    for trial in range(1000):
        w = int(rng.integers(2, 17))
        prompt = int(rng.integers(1, 30_000))
        f = _random_fleet(rng, w, prompt)
        dynamo = f["potential_prefill_tokens"] / BS + f["decode_blocks"]
        ours = cost.score(_terms(cfg, f, prompt, capacity=np.full(w, 1e9)))
        np.testing.assert_allclose(ours, BLOCK_MS * dynamo, rtol=1e-12)
        signals = WorkerSignals.build(
            range(100, 100 + w),
            overlap_blocks=f["overlap_blocks"],
            potential_prefill_tokens=f["potential_prefill_tokens"],
            decode_blocks=f["decode_blocks"],
            active_requests=f["active_requests"],
            capacity_blocks=1e9,
        )
        # A conversation with many requests to come: affinity is off, so it must not matter.
        req = RouteRequest(
            request_id=f"r{trial}",
            prefix_id=f"p{trial % 7}",
            prompt_tokens=prompt,
            total_requests=50,
        )
        d = router.decide(req, signals, now=float(trial))
        assert d.worker_id == 100 + int(np.argmin(dynamo)), trial


def test_load_enters_additively_a_loaded_worker_never_gains() -> None:
    """Adding queued prefill, decode blocks or others' pins to one worker never lowers its
    score or improves its rank -- even when its score is negative (large affinity and a
    negative learned correction), where a multiplicative load modifier would reward it."""
    cfg = RouterConfig(affinity_cap_ms=5000.0)
    rng = np.random.default_rng(2)
    for _ in range(500):
        w = int(rng.integers(2, 9))
        prompt = int(rng.integers(64, 20_000))
        f = _random_fleet(rng, w, prompt)
        home = int(rng.integers(0, w))
        learned = rng.normal(-300.0, 200.0, size=w)
        f["overlap_blocks"][home] = prompt // BS  # the home holds the whole prompt
        f["potential_prefill_tokens"][home] = f["queued"][home]
        kw = dict(
            home=home,
            remaining_requests=5,
            learned=learned,
            reserved=rng.integers(0, 3000, size=w).astype(float),
        )
        base = _terms(cfg, f, prompt, **dict(kw))
        j = int(rng.integers(0, w))
        g = {k: v.copy() for k, v in f.items()}
        g["potential_prefill_tokens"][j] += rng.integers(1, 10_000)
        g["decode_blocks"][j] += rng.integers(0, 2000)
        kw2 = dict(kw)
        kw2["reserved"] = kw["reserved"].copy()
        kw2["reserved"][j] += rng.integers(0, 2000)
        loaded = _terms(cfg, g, prompt, **kw2)
        before, after = cost.score(base), cost.score(loaded)
        assert after[j] > before[j]
        others = np.arange(w) != j
        np.testing.assert_allclose(after[others], before[others])
        # Rank of the loaded worker can only get worse.
        assert (after < after[j]).sum() >= (before < before[j]).sum()
        # Additive: the affinity and learned terms are untouched by load.
        assert loaded["affinity_ms"][j] == base["affinity_ms"][j]
        assert loaded["learned_ms"][j] == base["learned_ms"][j]


def test_affinity_is_bounded_so_an_overloaded_home_loses() -> None:
    cfg = RouterConfig(affinity_cap_ms=200.0, prefill_chunk_tokens=0)  # ms linear in tokens
    prompt = 20_000  # home holds 300 blocks: uncapped value 300 * 0.96 = 288 ms -> 200
    f = {
        "overlap_blocks": np.array([300.0, 0.0]),
        "potential_prefill_tokens": np.array([prompt - 300 * BS, prompt]).astype(float),
        "decode_blocks": np.zeros(2),
        "active_requests": np.zeros(2),
    }
    kw = dict(home=0, remaining_requests=10)
    s = _terms(cfg, f, prompt, **kw)
    assert s["affinity_ms"][0] == pytest.approx(200.0) and s["affinity_ms"][1] == 0.0
    # Home's cache saves 288 ms of this prefill; with 450 ms of queue (30k tokens) the
    # overlap alone would lose (-288 + 450 > 0) but affinity keeps it (162 - 200 < 0).
    f["potential_prefill_tokens"][0] += 30_000
    s = _terms(cfg, f, prompt, **kw)
    without_affinity = cost.score(s) + s["affinity_ms"]
    assert without_affinity[0] > without_affinity[1] and int(np.argmin(cost.score(s))) == 0
    # Another 100 ms of queue (6.7k tokens): beyond the cap -> the conversation moves.
    f["potential_prefill_tokens"][0] += 6_700
    assert int(np.argmin(cost.score(_terms(cfg, f, prompt, **kw)))) == 1


def test_affinity_counts_only_cache_the_home_holds_exclusively() -> None:
    cfg = RouterConfig(affinity_cap_ms=1e6)
    f = {
        "overlap_blocks": np.array([100.0, 80.0, 0.0]),
        "potential_prefill_tokens": np.zeros(3),
        "decode_blocks": np.zeros(3),
        "active_requests": np.zeros(3),
    }
    s = _terms(cfg, f, 6400, home=0, remaining_requests=10)
    assert s["affinity_ms"][0] == pytest.approx(20 * BLOCK_MS)
    f["overlap_blocks"][1] = 100.0  # worker 1 has the same cache: moving loses nothing
    assert _terms(cfg, f, 6400, home=0, remaining_requests=10)["affinity_ms"][0] == 0.0


def test_affinity_scales_with_remaining_budget_and_pin() -> None:
    cfg = RouterConfig(affinity_cap_ms=1e6)
    assert cost.AFFINITY_HORIZON == 4.0
    prompt = 6400  # home holds 100 blocks -> 96 ms
    f = {
        "overlap_blocks": np.array([100.0, 0.0]),
        "potential_prefill_tokens": np.full(2, float(prompt)),
        "decode_blocks": np.zeros(2),
        "active_requests": np.zeros(2),
    }
    vals = [
        _terms(cfg, f, prompt, home=0, remaining_requests=r)["affinity_ms"][0]
        for r in (0, 1, 2, 4, 8)
    ]
    assert vals == pytest.approx([0.0, 24.0, 48.0, 96.0, 96.0])
    pinned = _terms(cfg, f, prompt, home=0, remaining_requests=0, pinned=True)
    assert pinned["affinity_ms"][0] == pytest.approx(96.0)


def test_eviction_cost_only_when_new_blocks_exceed_unpinned_space() -> None:
    cfg = RouterConfig()
    prompt = 64 * 100  # 100 new blocks
    f = {
        "overlap_blocks": np.zeros(3),
        "potential_prefill_tokens": np.full(3, float(prompt)),
        "decode_blocks": np.array([800.0, 800.0, 800.0]),
        "active_requests": np.zeros(3),
    }
    reserved = np.array([0.0, 150.0, 900.0])
    s = _terms(cfg, f, prompt, reserved=reserved, capacity=np.full(3, 1000.0))
    # w0: 200 free, no pins -> 0. w1: 1000-800-150 = 50 free -> 50 pinned blocks pushed out.
    # w2: free is negative -> all 100 new blocks come out of pinned ones.
    np.testing.assert_allclose(s["eviction_ms"], np.array([0.0, 50.0, 100.0]) * BLOCK_MS)
    assert int(np.argmin(cost.score(s))) == 0


def test_history_fallback_split_keeps_queued_part() -> None:
    """Dynamo computed potential prefill with zero overlap; the fallback overlap reduces only
    the request's own uncached part, not the queue behind it."""
    uncached, queued = cost.split_prefill(
        6400,
        np.array([50.0, 0.0]),
        np.array([6400.0 + 1000, 6400.0]),
        64,
        kv_overlap_blocks=np.zeros(2),
    )
    np.testing.assert_allclose(uncached, [6400 - 50 * 64, 6400])
    np.testing.assert_allclose(queued, [1000, 0])


def test_kv_wait_is_the_time_until_enough_requests_in_flight_end() -> None:
    """No wait where the request fits beside our blocks in flight. Past the capacity, the n
    requests there end one by one, the k-th after about k / (n + 1) holds, each freeing
    used / n blocks: one block too many on a worker that two long prompts fill costs a third
    of a hold, the same on a worker of fifty small requests a fiftieth, and an overflow as
    large as all they hold costs nearly a whole hold. More overflow never costs less, and
    the wait scales with the hold (long answers: seconds; short ones: milliseconds)."""
    capacity = np.full(5, 128.0)
    used = np.array([0.0, 100.0, 101.0, 128.0, 128.0])
    active = np.array([0.0, 2.0, 2.0, 2.0, 50.0])
    wait = cost.kv_full_ms(used, np.zeros(5), 28, capacity, active, 900.0)
    assert wait[:2].tolist() == [0.0, 0.0]
    assert wait[2] == pytest.approx(900.0 / 3)  # 1 block over: the first of 2 ends
    assert wait[3] == pytest.approx(900.0 / 3)  # 28 over, 64 freed per end: still the first
    # 28 over, 2.56 blocks per end: 11 of 50 ends (0.216 holds), never less than the
    # overflow's share of the KV (0.219 holds).
    assert wait[4] == pytest.approx(900.0 * 28 / 128)
    # Overflowing by all the blocks in flight needs every request there to end.
    two_long = np.full(1, 2.0)
    whole = cost.kv_full_ms(np.full(1, 128.0), np.zeros(1), 256, np.full(1, 256.0), two_long, 900.0)
    assert whole[0] == pytest.approx(900.0 * 2 / 3)
    # A request larger than the KV itself waits at least its overflow's turnover.
    huge = cost.kv_full_ms(np.zeros(1), np.zeros(1), 384, capacity[:1], np.zeros(1), 900.0)
    assert huge[0] == pytest.approx(900.0 * 256 / 128)
    overflows = cost.kv_full_ms(
        np.full(4, 120.0),
        np.zeros(4),
        np.array([10, 20, 60, 130]),
        np.full(4, 128.0),
        np.full(4, 6.0),
        900.0,
    )
    assert np.all(np.diff(overflows) >= 0)
    long_answers = cost.kv_full_ms(used, np.zeros(5), 28, capacity, active, 9000.0)
    assert long_answers[2:] == pytest.approx(10 * wait[2:])
    # Blocks already held by our requests in flight are not new: no overflow, no wait.
    assert cost.kv_full_ms(used, np.full(5, 28.0), 28, capacity, active, 900.0)[1] == 0.0
    assert not cost.kv_full_ms(used, None, 28, capacity, active, 900.0).any()  # not counted
    # A hold measured at 0 (one-token answers) still shows that the request does not fit.
    assert np.all(cost.kv_full_ms(used, np.zeros(5), 28, capacity, active, 0.0)[2:] > 0)


def test_a_prompt_that_does_not_fit_keeps_only_the_cache_the_room_holds() -> None:
    """Where the request fits beside our requests in flight, the reported overlap stands.
    Where it does not, it waits while the engine fills the room those requests leave: of its
    cached blocks that no request in flight holds, at most that room survives; the blocks a
    request in flight holds stay."""
    capacity = np.full(4, 100.0)
    overlap = np.full(4, 40.0)
    used = np.array([50.0, 90.0, 90.0, 100.0])
    shared = np.array([0.0, 0.0, 30.0, 0.0])
    kept = cost.kept_overlap(overlap, used, shared, 45, capacity)
    # 50 + 45 fits; 90 + 45 leaves room for 10; 30 held + 10 of room; a full KV keeps none.
    assert kept.tolist() == [40.0, 10.0, 40.0, 0.0]
    assert cost.kept_overlap(overlap, None, None, 45, capacity) is overlap  # not tracked


def test_chunked_prefill_is_the_mockers_polynomial_per_pass() -> None:
    """With the mocker's slope, the predicted prefill of t tokens is the mocker's time for t
    tokens alone on a worker: passes of at most the chunk, each 4.21e-7 t^2 + 0.01518 t +
    16.5 ms (benchmarks/replay/engine.py). At the default slope (0.015) it is within 1.3% of it."""
    from benchmarks.replay.engine import solo_prefill_ms

    tokens = np.array([1.0, 64, 1000, 5800, 8191, 8192, 8193, 8800, 20_000, 100_000])
    mocker = np.array([solo_prefill_ms(int(t), 1.0, 8192) for t in tokens])
    exact = RouterConfig(prefill_ms_per_token=1.518344e-2)
    np.testing.assert_allclose(cost.engine_prefill_ms(exact, tokens), mocker, rtol=1e-5)
    np.testing.assert_allclose(cost.engine_prefill_ms(RouterConfig(), tokens), mocker, rtol=0.013)
    # One pass at least: a full cache hit still costs a pass, as the engine recomputes a block.
    assert cost.engine_prefill_ms(exact, np.zeros(1))[0] == pytest.approx(16.50142)
    # prefill_chunk_tokens 0: linear, Dynamo's cost in ms.
    linear = RouterConfig(prefill_chunk_tokens=0)
    np.testing.assert_allclose(cost.engine_prefill_ms(linear, tokens), 0.015 * tokens)


def test_chunked_prefill_grows_and_each_token_costs_at_least_the_slope() -> None:
    """More tokens never cost less, and never less than the slope per token: the order of
    the workers by tokens is the order by predicted prefill, and a token saved by the cache
    is worth at least what the linear model said."""
    cfg = RouterConfig()
    t = np.arange(0.0, 40_000.0, 7.0)
    ms = cost.engine_prefill_ms(cfg, t)
    assert (np.diff(ms) >= cfg.prefill_ms_per_token * 7.0 - 1e-9).all()
