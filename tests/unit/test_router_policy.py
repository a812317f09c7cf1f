"""Router end to end: overlap, load, stickiness/pins, history fallback, learning in a
simulated heterogeneous cluster, adaptation, bounded state, worker churn, signals."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from router import feedback
from router.bandit import TTFT_SCALE_MS
from router.config import RouterConfig
from router.cost import TERMS
from router.kv_signals import signals_from_rows
from router.load import LoadTracker, request_blocks
from router.policy import HISTORY_WINDOW_S, Decision, NoWorkers, Router, RouteRequest
from router.signals import WorkerSignals

BS = 64


class SimCluster:
    """A few workers with hidden speeds, driven one request at a time.

    Each worker prefills its queue at 1/(ms_per_token * slowness) tokens per ms; the true
    TTFT of a request is slowness * ms_per_token * (queued + uncached) + overhead + noise.
    The signals handed to the router are what Dynamo would report (overlap from KV events,
    potential prefill = uncached + queued, decode blocks); the slowness is never shown.
    Decode blocks of a request linger ``decode_tau_s`` (exponential drain).
    """

    def __init__(
        self,
        slowness,
        seed=0,
        kv_events=True,
        dt_s=0.2,
        ms_per_token=0.015,
        overhead_ms=10.0,
        noise_ms=3.0,
        itl_ms=5.0,
        decode_tau_s=0.3,
    ):
        self.slow = np.asarray(slowness, dtype=float)
        self.n = len(self.slow)
        self.ids = np.arange(100, 100 + self.n)
        self.rng = np.random.default_rng(seed)
        self.kv_events, self.dt_s, self.ms_per_token = kv_events, dt_s, ms_per_token
        self.overhead_ms, self.noise_ms, self.itl_ms = overhead_ms, noise_ms, itl_ms
        self.decode_tau_s = decode_tau_s
        self.queued = np.zeros(self.n)
        self.decode = np.zeros(self.n)
        self.cache: list[dict[str, int]] = [dict() for _ in range(self.n)]
        self.now = 0.0
        self.k = 0
        self.hits = 0  # prefill tokens saved by cache hits

    def step(self, router: Router, prompt: int, prefix_id=None, total_requests=1, **kw):
        self.k += 1
        rid = f"r{self.k}"
        ov = np.zeros(self.n)
        if prefix_id is not None:
            ov = np.array([min(c.get(prefix_id, 0), prompt // BS) for c in self.cache], float)
        uncached = np.maximum(prompt - ov * BS, 0)
        seen_ov = ov if self.kv_events else np.zeros(self.n)
        sig = WorkerSignals.build(
            self.ids,
            overlap_blocks=seen_ov,
            potential_prefill_tokens=np.maximum(prompt - seen_ov * BS, 0) + self.queued,
            decode_blocks=self.decode,
        )  # nothing in flight at decision time: every request is reported at once below
        req = RouteRequest(
            request_id=rid,
            prefix_id=prefix_id,
            prompt_tokens=prompt,
            total_requests=total_requests,
            **kw,
        )
        d = router.decide(req, sig, self.now)
        w = int(d.worker_id - 100)
        u = float(uncached[w])
        self.hits += prompt - u
        ttft = (
            self.slow[w] * self.ms_per_token * (self.queued[w] + u)
            + self.overhead_ms
            + abs(self.rng.normal(0, self.noise_ms))
        )
        self.queued[w] += u
        if prefix_id is not None:
            self.cache[w][prefix_id] = prompt // BS
        self.decode[w] += prompt // BS
        router.report(rid, ttft, self.itl_ms, int(u), 64)
        self.now += self.dt_s
        self.queued = np.maximum(self.queued - self.dt_s * 1e3 / (self.ms_per_token * self.slow), 0)
        self.decode *= np.exp(-self.dt_s / self.decode_tau_s)
        if self.k % 10 == 0:
            router.sweep(self.now)  # the caller's background task, simulated
        return d, ttft


def _det(**kw) -> Router:
    """Deterministic router: learning off, so the cost model alone decides."""
    return Router(RouterConfig(bandit_enabled=False, seed=0, **kw))


def _sig(**kw) -> WorkerSignals:
    return WorkerSignals.build([10, 11, 12, 13], **kw)


def _req(rid: str, prompt: int, prefix: str | None = None, total: int = 1, **kw) -> RouteRequest:
    return RouteRequest(
        request_id=rid, prefix_id=prefix, prompt_tokens=prompt, total_requests=total, **kw
    )


# ------------------------------------------------------------------ cost-model behaviour
def test_overlap_preference() -> None:
    r = _det()
    d = r.decide(
        _req("a", 6400),
        _sig(overlap_blocks=[0, 0, 60, 0], potential_prefill_tokens=[6400, 6400, 2560, 6400]),
        0.0,
    )
    assert d.worker_id == 12 and d.reason == "overlap"
    assert d.candidates[0].worker_id == 12 and len(d.candidates) == 3
    scores = [c.score for c in d.candidates]
    assert scores == sorted(scores)
    c = d.candidates[0]
    t = c.terms
    assert set(t) == set(TERMS)
    assert c.score == pytest.approx(
        t["prefill_ms"]
        + t["decode_ms"]
        + t["eviction_ms"]
        + t["kv_full_ms"]
        + t["learned_ms"]
        - t["affinity_ms"]
    )


def test_load_avoidance_outweighs_small_overlap() -> None:
    """Worker 12 holds 10 blocks of the prompt but has 20k tokens queued: it loses."""
    r = _det()
    d = r.decide(
        _req("a", 6400),
        _sig(
            overlap_blocks=[0, 0, 10, 0],
            potential_prefill_tokens=[6400, 6400, 5760 + 20_000, 6400],
            decode_blocks=[50, 0, 0, 30],
        ),
        0.0,
    )
    assert d.worker_id == 11 and d.reason == "load"


def test_stickiness_while_budget_lasts_then_release() -> None:
    """Workers without KV events (history fallback). The home worker carries 8000 queued
    tokens: overlap alone would not keep the conversation there, the affinity value does
    while requests remain (reason 'sticky'); after the 4th of 4 requests the entry is
    released and the 5th request goes to an idle worker."""
    r = _det()
    queued = np.array([8000.0, 0, 0, 0])
    prompts = [6400, 7040, 7680, 8320, 8960]
    d = r.decide(
        _req("c1", prompts[0], "conv", total=4),
        _sig(potential_prefill_tokens=prompts[0] + np.zeros(4)),
        0.0,
    )
    home = d.worker_id
    assert d.reuse_remaining == 3
    queued = np.where(np.array([10, 11, 12, 13]) == home, 8000.0, 0.0)
    reasons = []
    for i, p in enumerate(prompts[1:4], start=2):
        d = r.decide(
            _req(f"c{i}", p, "conv", total=4), _sig(potential_prefill_tokens=p + queued), float(i)
        )
        assert d.worker_id == home and d.history_fallback and d.home_worker_id == home
        reasons.append(d.reason)
    assert reasons == ["sticky", "sticky", "sticky"]
    assert "conv" not in r.table  # budget exhausted -> released
    d = r.decide(
        _req("c5", prompts[4], "conv", total=4),
        _sig(potential_prefill_tokens=prompts[4] + queued),
        5.0,
    )
    assert d.worker_id != home and d.reason == "load"


def test_tail_guard_never_sends_a_turn_behind_a_hot_spot() -> None:
    """The home holds all 1000 blocks of the prompt and has 110k tokens queued (predicted TTFT
    1650 ms); the idle workers would recompute it all (960 ms) but carry 1000 decode blocks
    each (240 ms). The score keeps the turn home (1650 - 500 affinity < 960 + 240), 690 ms
    behind the best predicted TTFT: the guard (affinity_cap_ms, 500 ms) moves it. With the
    cap lifted out of reach the home wins."""
    prompt = 64_000
    chosen = {}
    for cap in (1e12, 500.0):
        r = _det(affinity_cap_ms=cap)
        r.table.observe("conv", 10, 0.0, total_requests=10, blocks=1000)
        sig = _sig(
            overlap_blocks=[1000, 0, 0, 0],
            potential_prefill_tokens=[110_000, prompt, prompt, prompt],
            decode_blocks=[0, 1000, 1000, 1000],
        )
        chosen[cap] = r.decide(_req(f"g{cap}", prompt, "conv", total=10), sig, 1.0).worker_id
    assert chosen[1e12] == 10
    assert chosen[500.0] != 10


def test_pin_keeps_conversation_until_ttl() -> None:
    r = _det()
    d = r.decide(
        _req("p1", 6400, "pinned", total=1, pin_ttl_s=30.0),
        _sig(potential_prefill_tokens=np.full(4, 6400.0)),
        0.0,
    )
    home = d.worker_id
    assert d.pinned and d.reuse_remaining == 0
    assert r.table.reserved_by_worker().get(home, 0) == 100
    queued = np.where(np.array([10, 11, 12, 13]) == home, 8000.0, 0.0)
    d = r.decide(_req("p2", 7040, "pinned"), _sig(potential_prefill_tokens=7040 + queued), 10.0)
    assert d.worker_id == home and d.reason == "pin"
    r.sweep(41.0)  # pin (from t=0) expired, budget 0 -> gone
    assert "pinned" not in r.table and r.table.reserved_by_worker().get(home, 0) == 0
    d = r.decide(_req("p3", 7680, "pinned"), _sig(potential_prefill_tokens=7680 + queued), 42.0)
    assert d.worker_id != home and d.reason == "load"


def test_exploration_is_scaled_by_the_cold_part_of_the_prompt() -> None:
    """A prompt cached in full somewhere never explores; a cold one does (high exploration,
    equal loads, so only the posterior sample can change the choice)."""

    def explorations(overlap: list[float], seed: int) -> int:
        r = Router(RouterConfig(seed=seed, exploration=4.0))
        n = 0
        for k in range(200):
            d = r.decide(
                _req(f"x{k}", 3200),
                _sig(
                    overlap_blocks=overlap,
                    potential_prefill_tokens=[3200 - 64 * o for o in overlap],
                ),
                float(k),
            )
            n += d.reason == "exploration"
            r.cancel(f"x{k}")
        return n

    assert explorations([0, 0, 50, 0], seed=0) == 0  # 50 of 50 blocks cached on worker 12
    assert explorations([0, 0, 0, 0], seed=0) > 20  # nothing to lose: the sample decides


def test_history_fallback_only_when_no_kv_overlap_and_recent() -> None:
    r = _det()
    r.decide(
        _req("h1", 6400, "conv", total=10),
        _sig(potential_prefill_tokens=[9000, 6400, 6400, 6400]),
        0.0,
    )
    d = r.decide(
        _req("h2", 7040, "conv", total=10), _sig(potential_prefill_tokens=np.full(4, 7040.0)), 1.0
    )
    assert d.history_fallback and d.worker_id == 11 and d.reason == "overlap"
    assert d.candidates[0].overlap_blocks == 100
    # KV events report overlap elsewhere: they win over history.
    d = r.decide(
        _req("h3", 7680, "conv", total=10),
        _sig(overlap_blocks=[0, 0, 110, 0], potential_prefill_tokens=[7680, 7680, 640, 7680]),
        2.0,
    )
    assert not d.history_fallback and d.worker_id == 12
    # Too old: no fallback.
    d = r.decide(
        _req("h4", 8320, "conv", total=10),
        _sig(potential_prefill_tokens=np.full(4, 8320.0)),
        3.0 + HISTORY_WINDOW_S,
    )
    assert not d.history_fallback


def test_anonymous_requests_leave_no_prefix_state() -> None:
    r = _det()
    for i in range(100):
        r.decide(_req(f"a{i}", 1000), _sig(potential_prefill_tokens=np.full(4, 1000.0)), float(i))
    assert len(r.table) == 0


def test_removed_worker_is_forgotten_and_home_elsewhere_is_ignored() -> None:
    r = Router(RouterConfig(seed=0))
    d = r.decide(
        _req("x1", 6400, "conv", total=5, pin_ttl_s=60),
        _sig(potential_prefill_tokens=np.full(4, 6400.0)),
        0.0,
    )
    gone = d.worker_id
    r.remove_worker(gone)
    assert gone not in r.bandit.workers and r.table.reserved_by_worker().get(gone, 0) == 0
    rest = [w for w in (10, 11, 12, 13) if w != gone]
    d = r.decide(
        _req("x2", 7040, "conv", total=5),
        WorkerSignals.build(rest, potential_prefill_tokens=np.full(3, 7040.0)),
        1.0,
    )
    assert d.worker_id in rest and d.home_worker_id == gone
    assert r.report("x1", 50.0, 5.0, 6400, 10)  # late feedback for the departed worker
    assert gone not in r.bandit.workers
    with pytest.raises(NoWorkers):
        r.decide(_req("x3", 10), WorkerSignals.build([]), 2.0)


def test_decision_serializes_for_traces() -> None:
    r = Router(RouterConfig(seed=0))
    d = r.decide(
        _req("t", 1000, "conv", total=3), _sig(potential_prefill_tokens=np.full(4, 1000.0)), 0.0
    )
    back = msgspec.json.decode(msgspec.json.encode(d), type=Decision)
    assert back == d and len(d.features) == 4


# ------------------------------------------------------------------ learning (simulated)
def _run(slowness, n, seed, change=None, **cfg):
    sim = SimCluster(slowness, seed=seed)
    r = Router(RouterConfig(seed=seed, **cfg))
    prompts = np.random.default_rng(seed + 1).integers(1000, 8000, size=n)
    chosen, ttft = np.empty(n, int), np.empty(n)
    for i in range(n):
        if change is not None and i == change[0]:
            sim.slow[change[1]] = change[2]
        d, t = sim.step(r, int(prompts[i]))
        chosen[i], ttft[i] = d.worker_id - 100, t
    return chosen, ttft, r


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slow_worker_loses_traffic_within_25_decisions(seed: int) -> None:
    """4 workers, worker 3's true prefill is 3x slower (invisible in the signals). With the
    learner, its share of decisions 25-300 is below 8% (seeds 0-4 measured 2-5%); the
    cost model alone keeps giving it ~25%, and TTFT p90 is ~2x worse."""
    chosen, ttft, _ = _run([1, 1, 1, 3], 300, seed)
    share = np.mean(chosen[25:] == 3)
    base_chosen, base_ttft, _ = _run([1, 1, 1, 3], 300, seed, bandit_enabled=False)
    base_share = np.mean(base_chosen[25:] == 3)
    assert share < 0.08, share
    assert base_share > 0.2, base_share
    assert np.percentile(ttft[25:], 90) < 0.7 * np.percentile(base_ttft[25:], 90)


@pytest.mark.parametrize("seed", [0, 1])
def test_adapts_when_a_worker_slows_mid_run(seed: int) -> None:
    """All 4 workers equal; at decision 300 worker 0 becomes 4x slower. Before: ~25% share.
    Within 200 decisions after the change its share drops below 8% (measured 2-5% over
    decisions 500-800)."""
    chosen, _, _ = _run([1, 1, 1, 1], 800, seed, change=(300, 0, 4.0))
    assert np.mean(chosen[100:300] == 0) > 0.15
    assert np.mean(chosen[500:800] == 0) < 0.08


def _multi_turn(seed: int, **cfg) -> tuple[float, Router]:
    """40 conversations x 8 growing turns on 4 equal workers with KV events, moderately
    loaded. Returns cached prompt tokens / the ideal (every turn after the first hitting
    its whole previous prompt)."""
    sim = SimCluster([1, 1, 1, 1], seed=seed, dt_s=0.05)
    r = Router(RouterConfig(seed=seed, **cfg))
    rng = np.random.default_rng(seed)
    ideal = 0
    convs = {f"c{i}": int(rng.integers(2000, 6000)) for i in range(40)}
    for turn in range(8):
        for cid in rng.permutation(list(convs)):
            if turn:
                ideal += convs[cid] // BS * BS
            convs[cid] += int(rng.integers(200, 800))
            sim.step(r, convs[cid], prefix_id=cid, total_requests=8)
    return sim.hits / ideal, r


@pytest.mark.parametrize("seed", [4, 5])
def test_affinity_keeps_more_cache_than_plain_kv_cost(seed: int) -> None:
    """Learning off: plain Dynamo-equivalent cost keeps ~87% of the ideal cache hits, the
    reuse-budget affinity ~93% (measured). With the learner on, cold-start exploration of a
    homogeneous fleet costs some hits (measured 83-89%); it must stay above 80%. Every
    conversation is released at the end."""
    # The affinity's own effect, under Dynamo's 1:1 decode weighting on both sides:
    plain, _ = _multi_turn(seed, bandit_enabled=False, affinity_weight=0.0, decode_block_weight=1.0)
    sticky, r = _multi_turn(seed, bandit_enabled=False, decode_block_weight=1.0)
    # and with the default (lighter) decode weighting, which keeps even more:
    default, _ = _multi_turn(seed, bandit_enabled=False)
    learned, r2 = _multi_turn(seed)
    assert sticky > plain + 0.03 and sticky > 0.9, (plain, sticky)
    assert default >= sticky - 0.01, (sticky, default)
    assert learned > 0.8, learned
    assert r.reasons["sticky"] > 0
    assert len(r.table) == 0 and len(r2.table) == 0  # budgets used up -> released


def test_router_state_stays_bounded_over_many_distinct_conversations(monkeypatch) -> None:
    monkeypatch.setattr(feedback, "MAX_PENDING_FEEDBACK", 300)
    r = Router(RouterConfig(seed=0, prefix_table_max_entries=500))
    sig = _sig(potential_prefill_tokens=np.full(4, 1000.0))
    for i in range(20_000):
        r.decide(_req(f"r{i}", 1000, f"conv{i}", total=5), sig, i * 0.001)
        if i % 3 == 0:
            r.report(f"r{i}", 20.0, 5.0, 1000, 10)
    s = r.stats()
    assert s["prefixes"] == 500 and s["prefix_evictions"] == 20_000 - 500
    assert s["pending_feedback"] == 300 and s["feedback_dropped"] > 0


def test_learner_save_restore_round_trip_through_router() -> None:
    _, _, r = _run([1, 1, 1, 3], 200, 0)
    state = msgspec.json.decode(msgspec.json.encode(r.state_dict()))
    fresh = Router(RouterConfig(seed=0))
    fresh.load_state_dict(state)
    x = np.array([1.0, 1.0, 0.0, 0.0])
    for w in range(100, 104):
        assert fresh.bandit.mean_correction(w, x, "ttft") == pytest.approx(
            r.bandit.mean_correction(w, x, "ttft")
        )
    assert fresh.bandit.mean_correction(103, x, "ttft") > 0.3  # slow worker remembered


# ------------------------------------------------------------------ signals
def test_signals_from_rows_aggregate_dp_ranks_and_add_our_load() -> None:
    """Per worker: the best rank's overlap, the least loaded rank's prefill plus our queue,
    Dynamo's decode blocks summed over ranks plus ours per rank; only live workers."""
    load = LoadTracker(BS)
    load.start("a", 7, uncached_tokens=100, prompt_tokens=640, osl=0, now=0.0)  # 10 blocks on 7
    rows = [
        {
            "worker_id": 7,
            "dp_rank": 0,
            "potential_prefill_tokens": 500,
            "potential_decode_blocks": 10,
        },
        {
            "worker_id": 7,
            "dp_rank": 1,
            "potential_prefill_tokens": 256,
            "potential_decode_blocks": 20,
        },
        {
            "worker_id": 3,
            "dp_rank": 0,
            "potential_prefill_tokens": 640,
            "potential_decode_blocks": 5,
        },
        {"worker_id": 9, "dp_rank": 0, "potential_prefill_tokens": 0, "potential_decode_blocks": 0},
    ]
    s, uncached = signals_from_rows(rows, 640, load, 1000, live=frozenset({3, 7}))
    assert s.worker_ids.tolist() == [3, 7] and uncached == {3: 640, 7: 256}
    assert s.overlap_blocks.tolist() == [0, 6]  # (640 - 256) // 64 on the best rank
    assert s.potential_prefill_tokens.tolist() == [640, 356]  # + our 100 queued on 7
    assert s.decode_blocks.tolist() == [5, 50] and s.active_requests.tolist() == [0, 2]
    assert s.capacity_blocks.tolist() == [1000, 1000]


def test_signals_take_the_workers_reported_capacity() -> None:
    """A worker's own card overrides the configured capacity; workers without one keep it."""
    rows = [
        {
            "worker_id": w,
            "dp_rank": 0,
            "potential_prefill_tokens": 640,
            "potential_decode_blocks": 10,
        }
        for w in (3, 7, 9)
    ]
    s, _ = signals_from_rows(rows, 640, LoadTracker(BS), 1000, reported_capacity={7: 192, 9: 512})
    assert s.capacity_blocks.tolist() == [1000, 192, 512]
    s, _ = signals_from_rows(rows, 640, LoadTracker(BS), 1000, reported_capacity={})
    assert s.capacity_blocks.tolist() == [1000] * 3


def test_tail_guard_counts_the_wait_for_kv_blocks() -> None:
    """The home holds all 1000 blocks of the prompt with nothing queued (a request of ours in
    flight there holds them, so they stay cached), but our requests in flight there overflow
    its 2000 KV blocks by five capacities: five turnovers of the KV at 300 ms each (1500 ms).
    The idle workers would recompute the prompt (960 ms) and carry 1000 decode blocks each
    (240 ms). The score keeps the turn home (1500 - 500 affinity < 960 + 240),
    540 ms behind the best predicted TTFT once the KV wait counts: the guard moves it. Without
    the KV term (no distinct-block count) the home is predicted at 0 ms and keeps it."""
    prompt = 64_000
    rb = request_blocks(prompt, RouterConfig().default_osl, BS)
    chosen = {}
    for kv_full in (False, True):
        r = _det(prefill_chunk_tokens=0)  # the ms above: linear prefill
        r.table.observe("conv", 10, 0.0, total_requests=10, blocks=1000)
        sig = _sig(
            overlap_blocks=[1000, 0, 0, 0],
            potential_prefill_tokens=[0, prompt, prompt, prompt],
            decode_blocks=[0, 1000, 1000, 1000],
            capacity_blocks=2000,
        )
        if kv_full:  # our distinct blocks in flight are counted (the prompt's hashes came)
            sig.used_blocks = np.array([13_000.0 - rb, 0.0, 0.0, 0.0])
            sig.shared_blocks = np.array([1000.0, 0.0, 0.0, 0.0])
            sig.hold_ms = 300.0  # a request holds its blocks 300 ms
        d = r.decide(_req(f"k{kv_full}", prompt, "conv", total=10), sig, 1.0)
        chosen[kv_full] = d.worker_id
        if kv_full:
            by_id = {c.worker_id: c for c in d.candidates}
            assert by_id[10].terms["kv_full_ms"] == pytest.approx(1500.0)
            assert by_id[10].score < by_id[d.worker_id].score  # the guard, not the score
    assert chosen[False] == 10
    assert chosen[True] != 10


def test_decode_load_counts_in_each_workers_learned_time() -> None:
    """Worker 10 has been measured at half the model's prefill time per token, worker 11 as
    predicted. The same decode load then costs it about half as much: the decode term is in
    each worker's learned time, so a fast worker's longer decode batch does not hide it."""
    r = Router(RouterConfig(seed=0, exploration=0.0))
    ids = np.array([10, 11])
    r.bandit.speed_factors(ids)  # registers the workers
    rng = np.random.default_rng(0)
    for _ in range(300):
        for w in (10, 11):
            k = rng.uniform(0.2, 8)
            resid_ms = (-50.0 * k if w == 10 else 0.0) + rng.normal(0, 5)
            r.bandit.update(w, np.array([1.0, k, 0.1, 0.25]), "ttft", resid_ms / TTFT_SCALE_MS)
    speed = r.bandit.speed_factors(ids)
    assert speed[0] < 0.7 * speed[1]
    d = r.decide(_req("a", 640), WorkerSignals.build([10, 11], decode_blocks=[400, 400]), 0.0)
    by_id = {c.worker_id: c.terms["decode_ms"] for c in d.candidates}
    assert by_id[10] == pytest.approx(by_id[11] * speed[0] / speed[1], rel=1e-6)
    assert by_id[10] < 0.7 * by_id[11]


def test_unhinted_extension_continues_its_conversation() -> None:
    """Without a prefix id, a prompt that extends an earlier one finds that one's home (here by
    the history fallback: no KV events); a prompt sharing only a prefix does not."""
    r = _det()
    base = list(range(1, 101))  # 100 blocks' chained hashes
    d1 = r.decide(
        _req("u1", 6400, block_hashes=base),
        _sig(potential_prefill_tokens=[9000, 6400, 6400, 6400]),
        0.0,
    )
    assert d1.home_worker_id is None and d1.worker_id == 11
    d2 = r.decide(
        _req("u2", 7040, block_hashes=[*base, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110]),
        _sig(potential_prefill_tokens=np.full(4, 7040.0)),
        1.0,
    )
    assert d2.home_worker_id == 11 and d2.worker_id == 11 and d2.history_fallback
    d3 = r.decide(
        _req("u3", 7040, block_hashes=[*base[:50], *range(500, 560)]),
        _sig(potential_prefill_tokens=np.full(4, 7040.0)),
        2.0,
    )
    assert d3.home_worker_id is None and not d3.history_fallback


def test_a_retry_is_the_same_turn_of_its_conversation() -> None:
    """A retry (another attempt at a request already placed) moves the home but spends no reuse
    budget, revives no conversation the first attempt ended, and is no new turn of an inferred
    conversation (its ~0 s gap would shorten every inferred claim)."""
    r = _det()
    bs = r.block_size
    for i, expect in ((0, 2), (1, 1), (2, None)):
        r.decide(_req(f"t{i}", 8 * bs, "conv", total=3), _sig(), float(i))
        r.decide(_req(f"t{i}#1", 8 * bs, "conv", total=3, retry=True), _sig(), float(i) + 0.5)
        entry = r.table.get("conv", float(i) + 0.5)
        assert (entry.remaining if entry is not None else None) == expect
    chain = list(range(1, 31))  # an unhinted 30-block prompt: its conversation is inferred
    r.decide(_req("u0", 30 * bs, block_hashes=chain), _sig(), 10.0)
    r.decide(_req("u0#1", 30 * bs, block_hashes=chain, retry=True), _sig(), 10.2)
    assert r.lineage is not None and r.lineage.continued == 0 and r.lineage.gap_s is None
