"""Our router inside the replay: deterministic, fed back by every request, hints honoured."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.replay.cluster import ClusterConfig, run_replay
from benchmarks.replay.ours import OursPolicy, router_config
from benchmarks.replay.trace import TraceRequest, read_mooncake
from router.hints import AgentHints


@pytest.fixture(scope="module")
def mooncake_slice(mooncake_path: Path) -> list[TraceRequest]:
    return read_mooncake(mooncake_path, limit=400)


def test_same_seed_gives_identical_records(mooncake_slice: list[TraceRequest]) -> None:
    cluster = ClusterConfig(num_workers=4, num_gpu_blocks=4096)
    a = run_replay(
        mooncake_slice, cluster, OursPolicy(router_config(cluster, seed=3), cluster.block_size)
    )
    b = run_replay(
        mooncake_slice, cluster, OursPolicy(router_config(cluster, seed=3), cluster.block_size)
    )
    assert a == b
    assert len({r.worker for r in a if not r.refused}) == 4


def test_every_request_is_fed_back_and_its_load_released(
    mooncake_slice: list[TraceRequest],
) -> None:
    cluster = ClusterConfig(num_workers=4, num_gpu_blocks=4096)
    policy = OursPolicy(router_config(cluster, seed=0), cluster.block_size)
    records = run_replay(mooncake_slice, cluster, policy)
    stats = policy.service.router.stats()
    assert stats["decisions"] == len([r for r in records if not r.refused])
    assert stats["pending_feedback"] == 0
    assert stats["feedback_timeouts"] == stats["feedback_unknown"] == 0
    assert len(policy.service.load) == 0  # every finish released its load on the virtual clock
    bandit = policy.service.router.bandit
    assert sum(bandit.observations(w) for w in policy.worker_ids) > 0  # the learner learned


def _session(sid: str, start: int, turns: int, t0: float) -> list[TraceRequest]:
    """A conversation whose context grows by two 512-token blocks per turn, 1 s tool gaps."""
    out = []
    for k in range(turns):
        hashes = tuple(range(1000 * (start + 1), 1000 * (start + 1) + 4 + 2 * k))
        out.append(
            TraceRequest(
                index=start + k,
                arrival_ms=t0,
                input_length=len(hashes) * 512,
                output_length=20,
                hash_ids=hashes,
                hints=AgentHints(prefix_id=sid, total_requests=turns, osl=20, iat_ms=1000),
                session_id=sid,
                parent=None if k == 0 else start + k - 1,
                delay_ms=1000.0,
            )
        )
    return out


def test_hinted_conversations_are_kept_home() -> None:
    trace = _session("a", 0, 4, 0.0) + _session("b", 4, 4, 10.0)
    cluster = ClusterConfig(num_workers=4, num_gpu_blocks=1024)
    policy = OursPolicy(router_config(cluster, seed=0), cluster.block_size)
    decisions = []
    find = policy.service.find_worker

    def spy(msg, now):  # type: ignore[no-untyped-def]
        d = find(msg, now)
        decisions.append((msg.request.prefix_id, d))
        return d

    policy.service.find_worker = spy  # type: ignore[method-assign]
    records = run_replay(trace, cluster, policy)
    for sid in ("a", "b"):
        workers = {d.worker_id for p, d in decisions if p == sid}
        assert len(workers) == 1, f"session {sid} moved: {workers}"
    later = [d for _, d in decisions[2:]]
    assert all(d.home_worker_id == d.worker_id for d in later)
    assert all(d.reuse_remaining >= 0 for d in later)
    # later turns reuse the whole previous context from the home's cache
    assert all(r.reused_tokens > 0 for r in records if r.index % 4)


def test_admission_refuses_only_at_its_deadline_and_loses_nothing(
    mooncake_slice: list[TraceRequest],
) -> None:
    """The 400-request slice at twice its arrival rate overloads 4 small workers: some
    requests are held and some refused, each exactly at the deadline; every request ends
    served or refused."""
    cluster = ClusterConfig(num_workers=4, num_gpu_blocks=4096, arrival_speedup_ratio=2.0)
    on = run_replay(
        mooncake_slice,
        cluster,
        OursPolicy(router_config(cluster, 0), cluster.block_size, admission_deadline_s=2.0),
    )
    refused = [r for r in on if r.refused]
    assert 0 < len(refused) < len(on)
    assert all(r.finish_ms - r.arrival_ms <= 2000.0 + 1e-6 for r in refused)
    assert all(r.ttft_ms >= 0 and r.output_length > 0 for r in on if not r.refused)
    off = run_replay(
        mooncake_slice,
        cluster,
        OursPolicy(router_config(cluster, 0), cluster.block_size, admission_deadline_s=0.0),
    )
    assert not any(r.refused for r in off)


def test_feedback_times_the_first_token_from_placement_not_from_the_admission_queue() -> None:
    """As the processor measures an attempt (processor/handler.py: ``new_attempt`` after the
    decision, admission wait included), the learner's TTFT starts when the request is placed:
    a request held in the admission queue must not teach the learner its wait as the
    worker's slowness."""
    trace = [
        TraceRequest(
            index=i,
            arrival_ms=0.0,
            input_length=6144,
            output_length=200,
            hash_ids=tuple(range(100 * i, 100 * i + 12)),
            hints=AgentHints(prefix_id=f"c{i}", total_requests=1, osl=200),
        )
        for i in range(6)
    ]
    cluster = ClusterConfig(num_workers=1, num_gpu_blocks=256)
    policy = OursPolicy(router_config(cluster, 0), cluster.block_size, admission_deadline_s=30.0)
    placed: dict[str, float] = {}
    fed: dict[str, float | None] = {}
    find, feedback = policy.service.find_worker, policy.service.feedback

    def spy_find(msg, now):  # type: ignore[no-untyped-def]
        d = find(msg, now)
        if d.reason != "held":
            placed[d.request_id] = now * 1000.0
        return d

    def spy_feedback(msg):  # type: ignore[no-untyped-def]
        if msg.event == "finish":
            fed[msg.request_id] = msg.ttft_ms
        feedback(msg)

    policy.service.find_worker = spy_find  # type: ignore[method-assign]
    policy.service.feedback = spy_feedback  # type: ignore[method-assign]
    records = run_replay(trace, cluster, policy)
    served = [r for r in records if not r.refused]
    held = [r for r in served if placed[r.request_id] > r.arrival_ms]
    assert held, "no request waited for admission"
    for r in served:
        assert fed[r.request_id] == pytest.approx(r.first_token_ms - placed[r.request_id])
