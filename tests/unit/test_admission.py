"""The admission queue: order, bound, deadlines; and the router's held decision."""

from __future__ import annotations

import numpy as np

from router.admission import AdmissionQueue
from router.config import RouterConfig
from router.policy import Router, RouteRequest
from router.signals import WorkerSignals


def test_order_is_priority_then_sensitivity_then_arrival() -> None:
    q = AdmissionQueue(deadline_s=2.0)
    q.push("late-low", 0.0)
    q.push("urgent", 0.1, latency_sensitivity=1.0)
    q.push("important", 0.2, priority=5)
    q.push("urgent-later", 0.3, latency_sensitivity=1.0)
    order = []
    while (h := q.head()) is not None:
        order.append(h.request_id)
        q.admit(h.request_id, 1.0)
    assert order == ["important", "urgent", "urgent-later", "late-low"]
    assert q.stats.admitted == 4 and len(q) == 0


def test_a_full_queue_refuses_and_counts() -> None:
    q = AdmissionQueue(deadline_s=2.0, max_len=2)
    assert q.push("a", 0.0) and q.push("b", 0.0)
    assert q.push("c", 0.0) is None
    assert q.stats.rejected_full == 1 and len(q) == 2


def test_deadlines_expire_in_arrival_order_and_skip_the_gone() -> None:
    q = AdmissionQueue(deadline_s=2.0)
    q.push("a", 0.0)
    q.push("b", 0.5)
    q.push("c", 1.0)
    q.cancel("a")
    assert q.next_deadline() == 2.5
    assert [h.request_id for h in q.expire(2.6)] == ["b"]
    assert q.stats.rejected_deadline == 1 and q.stats.cancelled == 1
    assert q.head() is not None and q.head().request_id == "c"  # type: ignore[union-attr]


def test_requests_leaving_one_by_one_leave_no_trace() -> None:
    """The processor's path (admit, cancel, refuse by id; never expire): what left is
    forgotten, and the order of those still waiting holds."""
    q = AdmissionQueue(deadline_s=2.0)
    q.push("old-low", 0.0, priority=-1)  # waits throughout
    for i in range(10_000):
        t = i * 0.001
        rid = f"r{i}"
        q.push(rid, t, priority=i % 3)
        if i % 3 == 0:
            q.admit(rid, t)
        elif i % 3 == 1:
            q.cancel(rid)
        else:
            q.refuse(rid)
    assert len(q) == 1
    assert len(q._heap) < 100 and len(q._by_deadline) < 100  # not one entry per request
    q.push("high", 10.0, priority=5)
    assert q.head() is not None and q.head().request_id == "high"  # type: ignore[union-attr]
    assert q.next_deadline() == 2.0
    assert [h.request_id for h in q.expire(12.5)] == ["old-low", "high"]


def _full_signals(free_worker: bool) -> WorkerSignals:
    """Two workers whose in-flight blocks fill their 1000 KV blocks; optionally a third idle."""
    ids = [10, 11, 12] if free_worker else [10, 11]
    n = len(ids)
    sig = WorkerSignals.build(
        ids,
        overlap_blocks=[0] * n,
        potential_prefill_tokens=[6400] * n,
        decode_blocks=[0] * n,
        capacity_blocks=1000,
    )
    used = [1000.0] * n
    if free_worker:
        used[-1] = 0.0
    sig.used_blocks = np.array(used)
    sig.shared_blocks = np.zeros(n)
    return sig


def test_a_new_conversation_is_held_while_every_worker_is_full() -> None:
    r = Router(RouterConfig(bandit_enabled=False, seed=0))
    new = RouteRequest(request_id="n", prefix_id="new", prompt_tokens=6400, admit_within_ms=2000)
    d = r.decide(new, _full_signals(free_worker=False), 1.0)
    assert d.reason == "held" and d.worker_id == -1
    assert r.stats()["decisions"] == 0 and len(r.table) == 0  # nothing was recorded
    for t in (1.05, 1.1, 1.15):  # the admission queue's head asks again every few ms
        assert r.decide(new, _full_signals(free_worker=False), t).reason == "held"
    assert sum(r.stats()["reasons"].values()) == 0  # asks are not placements


def test_a_new_conversation_goes_where_it_starts_now() -> None:
    r = Router(RouterConfig(bandit_enabled=False, seed=0))
    new = RouteRequest(request_id="n", prefix_id="new", prompt_tokens=6400, admit_within_ms=2000)
    assert r.decide(new, _full_signals(free_worker=True), 1.0).worker_id == 12


def test_a_running_conversation_is_never_held() -> None:
    r = Router(RouterConfig(bandit_enabled=False, seed=0))
    r.table.observe("conv", 10, 0.0, total_requests=5, blocks=100)
    turn = RouteRequest(request_id="t", prefix_id="conv", prompt_tokens=6400, admit_within_ms=0)
    d = r.decide(turn, _full_signals(free_worker=False), 1.0)
    assert d.reason != "held" and d.worker_id in (10, 11)


def test_a_prompt_longer_than_the_time_left_waits_only_for_load() -> None:
    """120k tokens predict ~2.4 s of prefill on any worker, beyond a 2 s deadline even alone.
    Held for that, it would never fit and would block the queue behind it until refused; once
    its own prefill exceeds the time left, it is held only while its wait does not fit."""
    r = Router(RouterConfig(bandit_enabled=False, seed=0))

    def new(i: int, prompt: int, left_ms: float) -> RouteRequest:
        return RouteRequest(
            request_id=f"n{i}", prefix_id=f"new{i}", prompt_tokens=prompt, admit_within_ms=left_ms
        )

    queued = np.array([500.0, 0.0, 8000.0])
    sig = WorkerSignals.build([10, 11, 12], potential_prefill_tokens=120_000 + queued)
    d = r.decide(new(0, 120_000, 2000), sig, 1.0)
    assert d.worker_id == 11 and d.predicted_ttft_ms > 2000
    # 20k tokens queued everywhere: ~0.4 s of wait, more than the 0.1 s left -> held.
    sig = WorkerSignals.build([10, 11, 12], potential_prefill_tokens=120_000 + queued + 20_000)
    assert r.decide(new(1, 120_000, 2000), sig, 2.0).reason != "held"
    assert r.decide(new(2, 120_000, 100), sig, 2.0).reason == "held"
    # 64k tokens, ~1.3 s alone: while that fits the time left, its whole TTFT must fit ...
    sig = WorkerSignals.build([10, 11, 12], potential_prefill_tokens=64_000 + queued + 20_000)
    assert r.decide(new(3, 64_000, 1500), sig, 3.0).reason == "held"  # ~1.7 s > 1.5 s left
    sig = WorkerSignals.build([10, 11, 12], potential_prefill_tokens=64_000 + queued)
    assert r.decide(new(4, 64_000, 1500), sig, 3.0).worker_id == 11
    # ... and past that, only its wait: an idle worker places it.
    assert r.decide(new(5, 64_000, 1000), sig, 3.0).worker_id == 11


def test_a_prompt_just_under_the_deadline_is_not_refused_on_idle_workers() -> None:
    """98k tokens predict ~1,999 ms alone, just inside a 2 s deadline. With the whole deadline
    as the line between "its TTFT must fit" and "only its wait", it fitted only in the first
    instant: a few ms later it was held with every worker idle, and refused at the deadline
    (the Mooncake trace at 8 workers lost one or two requests so)."""
    r = Router(RouterConfig(bandit_enabled=False, seed=0))
    sig = WorkerSignals.build([10, 11, 12], potential_prefill_tokens=np.full(3, 98_000.0))
    late = RouteRequest(request_id="n", prefix_id="new", prompt_tokens=98_000, admit_within_ms=1990)
    assert r.decide(late, sig, 1.0).reason != "held"


def test_admission_never_places_past_the_tail_guard() -> None:
    """Worker 0 would start a new conversation 100 ms out but is waiting for KV blocks;
    worker 1 has room but predicts 700 ms, beyond the guard's 500 ms: held, not placed there."""
    from router.policy import pick

    cfg = RouterConfig(bandit_enabled=False, affinity_cap_ms=500.0)
    new = RouteRequest(request_id="n", prefix_id="new", prompt_tokens=640, admit_within_ms=2000)
    total = np.array([100.0, 700.0])
    ttft = np.array([100.0, 700.0])
    kv_full = np.array([50.0, 0.0])
    uncached = np.array([640.0, 640.0])
    assert pick(cfg, new, True, total, ttft, kv_full, uncached) == -1
    ttft[1] = total[1] = 550.0  # within the guard: placed there
    assert pick(cfg, new, True, total, ttft, kv_full, uncached) == 1
