"""Feedback: bounded pending store, timeouts via sweep, failure penalty, in-flight counts."""

from __future__ import annotations

import numpy as np
import pytest

from router import feedback
from router.bandit import TTFT_SCALE_MS, WorkerBandit
from router.config import RouterConfig
from router.cost import engine_prefill_ms
from router.feedback import FeedbackTracker

X = np.array([1.0, 0.5, 0.1, 0.1])


def _tracker(**kw) -> tuple[FeedbackTracker, WorkerBandit]:
    cfg = RouterConfig(seed=0, **kw)
    b = WorkerBandit(cfg)
    b.sample(np.array([0, 1]), np.stack([X, X]))  # register workers 0 and 1
    return FeedbackTracker(cfg, b), b


def test_bounded_pending_drops_oldest_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feedback, "MAX_PENDING_FEEDBACK", 100)
    f, _ = _tracker()
    for i in range(250):
        f.add(f"r{i}", i % 2, X, 0.0, 30.0, now=float(i))
    assert len(f) == 100 and f.dropped == 150
    assert not f.report("r0", 10.0, 5.0)  # dropped: unknown now
    assert f.report("r249", 10.0, 5.0, output_tokens=10)
    assert f.unknown_reports == 1 and len(f) == 99


def test_sweep_is_bounded_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feedback, "SWEEP_BATCH", 50)
    f, _ = _tracker(feedback_timeout_s=10.0)
    for i in range(120):
        f.add(f"r{i}", i % 2, X, 0.0, 30.0, now=0.0)
    assert f.sweep(5.0) == 0  # not due yet
    assert f.sweep(11.0) == 50
    assert f.sweep(11.0) == 50
    assert f.sweep(11.0) == 20 and len(f) == 0
    assert f.timeouts == 120


def test_timeouts_via_sweep_penalize_the_silent_worker() -> None:
    """Worker 1 never answers, worker 0 answers as predicted; a background sweep every tick
    expires worker 1's decisions 10 s later with the timeout penalty (5 s). After 200 ticks
    worker 1's learned TTFT correction is > 2 s above worker 0's."""
    f, b = _tracker(feedback_timeout_s=10.0)
    for t in range(200):
        f.add(f"a{t}", 0, X, 0.0, 30.0, now=float(t))
        f.add(f"b{t}", 1, X, 0.0, 30.0, now=float(t))
        f.report(f"a{t}", 30.0, 5.0, output_tokens=10)
        f.sweep(float(t))
    assert f.timeouts == 200 - 10  # the last 10 are not due yet
    corr1 = b.mean_correction(1, X, "ttft") * TTFT_SCALE_MS
    corr0 = b.mean_correction(0, X, "ttft") * TTFT_SCALE_MS
    assert corr1 > 0 > corr0 and corr1 - corr0 > 2000.0


def test_a_worker_that_answered_is_not_penalised_when_the_end_comes_late() -> None:
    """A generation longer than the timeout: the first token came, the end was not reported
    in time. The record expires (bounded store) but the learner is not told the worker is
    slow; the same expiry without a first token is the timeout penalty."""
    f, b = _tracker(feedback_timeout_s=10.0)
    before = b.mean_correction(0, X, "ttft")
    for i in range(50):
        f.add(f"long{i}", 0, X, 0.0, 30.0, now=0.0)
        f.first_token(f"long{i}")
    assert f.sweep(11.0) == 50 and len(f) == 0 and f.timeouts == 50
    assert b.mean_correction(0, X, "ttft") == before
    assert not f.report("long0", 30.0, 5.0, output_tokens=9000)  # the late end: unknown now
    for i in range(50):
        f.add(f"silent{i}", 1, X, 0.0, 30.0, now=20.0)
    f.sweep(31.0)
    assert b.mean_correction(1, X, "ttft") > before + 0.5  # the silent worker: penalised


def test_failure_is_penalized_like_a_slow_ttft() -> None:
    f, b = _tracker()
    for i in range(60):
        f.add(f"ok{i}", 0, X, 0.0, 30.0, now=0.0)
        f.report(f"ok{i}", 30.0, 5.0, output_tokens=10)
        f.add(f"bad{i}", 1, X, 0.0, 30.0, now=0.0)
        f.report(f"bad{i}", None, None, ok=False)
    assert f.failures == 60 and f.reports == 60
    assert b.mean_correction(1, X, "ttft") > b.mean_correction(0, X, "ttft") + 5.0


def test_a_served_answer_without_ttft_teaches_nothing() -> None:
    """ok=True without a TTFT (a whole, non-streamed answer) is neither a failure nor a
    measurement: the decision is closed, the learner unchanged, and it is counted apart
    (counted as a failure, a client's non-streamed warm-up would skew one worker's correction)."""
    f, b = _tracker()
    before = b.mean_correction(1, X, "ttft")
    for i in range(20):
        f.add(f"whole{i}", 1, X, 0.0, 30.0, now=0.0)
        assert f.report(f"whole{i}", None, None, output_tokens=0)
    assert f.unmeasured == 20 and f.failures == 0 and f.reports == 0 and len(f) == 0
    assert b.mean_correction(1, X, "ttft") == before


def test_observed_cache_hit_replaces_predicted_uncached_tokens() -> None:
    """The engine reports fewer uncached tokens than we predicted and a TTFT that matches
    the model for that hit: nothing to learn (near-zero correction)."""
    f, b = _tracker()
    hit_ms = float(engine_prefill_ms(f.cfg, 200.0))  # one pass of 200 tokens, ~19 ms
    for i in range(100):
        f.add(f"r{i}", 0, X, queued_tokens=0.0, predicted_ttft_ms=46.0, now=0.0)
        # predicted 2000 uncached (46 ms); the engine only prefilled 200, in hit_ms.
        f.report(f"r{i}", hit_ms, 5.0, uncached_tokens=200, output_tokens=10)
    x_obs = X.copy()
    x_obs[1] = 0.2
    assert abs(b.mean_correction(0, x_obs, "ttft") * TTFT_SCALE_MS) < 2.0


def test_retried_request_id_supersedes_the_old_decision() -> None:
    f, b = _tracker()
    f.add("r", 0, X, 0.0, 30.0, now=0.0)
    f.add("r", 1, X, 0.0, 30.0, now=1.0)
    assert len(f) == 1
    assert f.report("r", 40.0, 5.0, output_tokens=10)
    assert b.observations(1) > 0 and b.observations(0) == 0  # learned for the retry's worker
