"""Bandit: prior, learning, forgetting, vectorized sampling, worker churn, save/restore."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest

from router import bandit
from router.bandit import DIM, IDLE_FORGETTING_PER_S, PRIOR_VARIANCE, TTFT_SCALE_MS, WorkerBandit
from router.config import RouterConfig


def _x(prefill: float = 1.0) -> np.ndarray:
    """Features with ``prefill`` x 100 ms of predicted prefill."""
    return np.array([1.0, prefill, 0.1, 0.25])


def test_new_workers_start_at_zero_correction() -> None:
    b = WorkerBandit(RouterConfig(seed=0, exploration=0.0))
    sampled, mean = b.sample(np.array([5, 9]), np.stack([_x(), _x()]))
    assert sampled.shape == (2, 2)
    np.testing.assert_array_equal(mean, 0.0)
    # Twenty more at once (the arrays grow on the way): each starts as fast as the model.
    np.testing.assert_array_equal(b.speed_factors(np.arange(100, 120)), 1.0)


def test_learns_per_worker_slowdown_relative_to_fleet() -> None:
    """Worker 1 runs at half speed (its TTFT residual is the whole predicted prefill again,
    worker 0's nothing): after 200 observations its posterior-mean TTFT correction at a
    400 ms prediction is ~+400 ms above worker 0's."""
    cfg = RouterConfig(seed=0)
    b = WorkerBandit(cfg)
    rng = np.random.default_rng(0)
    ids = np.array([0, 1])
    b.sample(ids, np.stack([_x(), _x()]))  # registers both workers
    for _ in range(200):
        for w, slope in ((0, 0.0), (1, 100.0)):
            k = rng.uniform(0.2, 8)
            x = _x(k)
            resid_ms = slope * k + rng.normal(0, 20)
            b.update(w, x, "ttft", resid_ms / TTFT_SCALE_MS)
    diff = b.mean_correction(1, _x(4.0), "ttft") - b.mean_correction(0, _x(4.0), "ttft")
    assert diff * TTFT_SCALE_MS == pytest.approx(400.0, rel=0.1)
    # What /metrics shows: worker 1 takes one whole prediction more than worker 0.
    ratios = b.prefill_ratios()
    assert ratios[1] - ratios[0] == pytest.approx(1.0, rel=0.1)
    # The factor the decode term uses is the same number.
    np.testing.assert_allclose(b.speed_factors(ids), [ratios[0], ratios[1]])


def test_speed_factor_is_floored() -> None:
    """A worker measured far faster than the model (noise, or a bad calibration) still pays
    MIN_SPEED_FACTOR of its decode load, never nothing or a negative cost."""
    b = WorkerBandit(RouterConfig(seed=0))
    ids = np.array([0, 1])
    b.speed_factors(ids)
    for _ in range(200):
        b.update(0, _x(4.0), "ttft", -10.0)
        b.update(1, _x(4.0), "ttft", 0.0)
    assert b.prefill_ratios()[0] < bandit.MIN_SPEED_FACTOR
    assert b.speed_factors(ids)[0] == bandit.MIN_SPEED_FACTOR


def test_sample_covariance_matches_posterior() -> None:
    """The cached-factor sampler draws x.theta with variance x^T P^-1 x (checked on 20k
    draws to 5%)."""
    cfg = RouterConfig(seed=1, exploration=1.0)
    b = WorkerBandit(cfg)
    rng = np.random.default_rng(1)
    ids = np.array([3])
    b.sample(ids, _x()[None])
    for _ in range(30):
        b.update(
            3,
            rng.uniform(0, 2, DIM) * np.array([0, 1, 1, 1]) + np.eye(DIM)[0],
            "ttft",
            rng.normal(),
        )
    x = _x()
    draws = np.array([b.sample(ids, x[None])[0][0, 0] for _ in range(20_000)])
    hs = b._heads
    r = b._row[3]
    expected = x @ np.linalg.inv(hs.precision[0, r]) @ x
    assert draws.var() == pytest.approx(expected, rel=0.05)
    assert draws.mean() == pytest.approx(x @ hs.mean[0, r], abs=4 * np.sqrt(expected / 20_000))


def test_latency_sensitive_requests_explore_less() -> None:
    b = WorkerBandit(RouterConfig(seed=2, exploration=1.0))
    ids = np.arange(4)
    x = np.stack([_x()] * 4)
    relaxed = np.std([b.sample(ids, x, 0.0)[0][0] for _ in range(2000)])
    sensitive = np.std([b.sample(ids, x, 3.0)[0][0] for _ in range(2000)])
    assert sensitive == pytest.approx(relaxed / 4.0, rel=0.1)  # scale = 1 / (1 + 3)


def test_forgetting_follows_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    """After 300 observations of +2 units then 300 of -2 units, a forgetting learner sits
    near -2 (shrunk toward the prior: ~50 effective observations at noise variance 0.25
    against the prior variance); a non-forgetting one near the average 0."""
    x = np.array([1.0, 0, 0, 0])
    means = {}
    monkeypatch.setattr(bandit, "BASELINE_EMA", 1e-9)
    for g in (0.98, 1.0):
        monkeypatch.setattr(bandit, "FORGETTING", g)
        b = WorkerBandit(RouterConfig(seed=0))
        b.sample(np.array([0]), x[None])
        b.baseline["ttft"], b._baseline_n["ttft"] = 0.0, 10**9  # isolate the head
        for y in [2.0] * 300 + [-2.0] * 300:
            b.update(0, x, "ttft", y)
        means[g] = b.mean_correction(0, x, "ttft")
    pv = PRIOR_VARIANCE[0][0]  # x is the bias alone
    assert means[0.98] == pytest.approx(-2.0 * 50 / 0.25 / (50 / 0.25 + 1 / pv), abs=0.05)
    assert abs(means[1.0]) < 0.1


def test_idle_decay_widens_posterior_then_returns_to_prior() -> None:
    """The background sweep's idle discount: after 10 idle minutes at the default rate the
    posterior is >5x wider (so Thompson sampling retries the worker); after an hour it is
    back at the prior."""
    cfg = RouterConfig(seed=0)
    b = WorkerBandit(cfg)
    b.sample(np.array([0, 1]), np.stack([_x(), _x()]))
    for _ in range(50):
        b.update(0, _x(), "ttft", 3.0)
        b.update(1, _x(), "ttft", -3.0)
    x = _x()

    def var() -> float:
        return float(x @ np.linalg.inv(b._heads.precision[0, b._row[0]]) @ x)

    mean0, var0 = b.mean_correction(0, x, "ttft"), var()
    b.decay(IDLE_FORGETTING_PER_S**600)
    assert var() > 5 * var0 and abs(b.mean_correction(0, x, "ttft")) < abs(mean0)
    b.decay(IDLE_FORGETTING_PER_S**3000)
    assert abs(b.mean_correction(0, x, "ttft")) < 0.05
    assert var() == pytest.approx(float(np.dot(PRIOR_VARIANCE[0], x * x)), rel=1e-3)


def test_workers_come_and_go_storage_bounded_by_live_workers() -> None:
    b = WorkerBandit(RouterConfig(seed=0))
    for gen in range(20):  # 20 generations of 16 workers, each replaced by new ids
        ids = np.arange(gen * 16, gen * 16 + 16)
        x = np.tile(_x(), (16, 1))
        b.sample(ids, x)
        for w in ids:
            b.update(int(w), x[0], "ttft", 1.0)
        for w in ids:
            b.remove(int(w))
    assert b.workers == []
    assert b._heads.capacity == 16  # rows reused, never grew past the live set
    # A removed worker's late feedback does not resurrect it.
    assert b.update(3, _x(), "ttft", 1.0) is None and b.workers == []


def test_state_dict_round_trips_through_json_and_msgspec() -> None:
    cfg = RouterConfig(seed=7)
    b = WorkerBandit(cfg)
    rng = np.random.default_rng(7)
    ids = np.array([11, 22, 33])
    b.sample(ids, np.tile(_x(), (3, 1)))
    for _ in range(100):
        w = int(rng.choice(ids))
        b.update(w, _x(rng.uniform(0, 8)), "ttft", rng.normal(w / 11, 1))
        b.update(w, _x(rng.uniform(0, 8)), "itl", rng.normal(-w / 11, 0.1))
    state = b.state_dict()
    via_json = json.loads(json.dumps(state))
    via_msgspec = msgspec.json.decode(msgspec.json.encode(state))
    for restored_state in (via_json, via_msgspec):
        c = WorkerBandit(cfg, rng=np.random.default_rng(99))
        c.load_state_dict(restored_state)
        assert sorted(c.workers) == [11, 22, 33]
        assert c.baseline == b.baseline
        for w in ids:
            for head in ("ttft", "itl"):
                assert c.mean_correction(int(w), _x(3.0), head) == pytest.approx(
                    b.mean_correction(int(w), _x(3.0), head), rel=1e-12
                )
        # Identical sampling given the same RNG stream.
        b2 = WorkerBandit(cfg, rng=np.random.default_rng(5))
        b2.load_state_dict(state)
        c.rng = np.random.default_rng(5)
        x = np.tile(_x(), (3, 1))
        np.testing.assert_allclose(b2.sample(ids, x)[0], c.sample(ids, x)[0])
    with pytest.raises(ValueError):
        WorkerBandit(cfg).load_state_dict({"version": 2})


@pytest.mark.parametrize("y", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_observation_teaches_nothing(y: float) -> None:
    """A broken measurement (NaN or inf residual) is ignored: it was clipped first, so NaN
    was learned as the largest speed-up there is (-RESIDUAL_CLIP) and moved the baseline."""
    b = WorkerBandit(RouterConfig(seed=0))
    b.sample(np.array([1]), np.stack([_x()]))
    before = b.state_dict()
    assert b.update(1, _x(), "ttft", y) is None
    assert b.state_dict() == before
