"""The replay loop: arrivals, dependencies, KV-event visibility, policies and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.replay.cluster import (
    ClusterConfig,
    ClusterView,
    KvIndex,
    SimRequest,
    block_hashes_of,
    run_replay,
)
from benchmarks.replay.dynamo_kv import KvAffinityPolicy, KvPortPolicy, RoundRobinPolicy
from benchmarks.replay.records import RequestRecord
from benchmarks.replay.trace import TraceRequest


def _req(i: int, t: float, hashes: tuple[int, ...], isl: int, osl: int = 4, **kw) -> TraceRequest:
    return TraceRequest(
        index=i, arrival_ms=t, input_length=isl, output_length=osl, hash_ids=hashes, **kw
    )


class _Fixed:
    """Routes every request to one worker and records what the view showed it."""

    name = "fixed"

    def __init__(self, worker: int = 0) -> None:
        self.worker = worker
        self.seen: list[tuple[float, list[int]]] = []
        self.first: list[tuple[str, float]] = []
        self.done: list[tuple[str, float]] = []

    def route(self, req: SimRequest, view: ClusterView) -> int:
        self.seen.append((view.now_ms, view.overlap_blocks(req).tolist()))
        return self.worker

    def on_first_token(self, req: SimRequest, worker: int, now_ms: float) -> None:
        self.first.append((req.request_id, now_ms))

    def on_finish(self, req: SimRequest, worker: int, now_ms: float, rec: RequestRecord) -> None:
        self.done.append((req.request_id, now_ms))


def test_block_hashes_follow_the_token_prefix() -> None:
    cluster = ClusterConfig(num_workers=1)
    a = block_hashes_of(_req(0, 0, (1, 2, 3), 1500), cluster)
    b = block_hashes_of(_req(1, 0, (1, 2, 4), 1100), cluster)
    assert a.dtype == np.uint64 and len(a) == 1500 // 64 and len(b) == 1100 // 64
    # the first 16 engine blocks (hash ids 1 and 2) are shared, the rest differ
    assert (a[:16] == b[:16]).all() and not (a[16:17] == b[16:17]).any()
    assert len(set(a.tolist())) == len(a)  # positions inside one hash block differ


def test_dependent_request_waits_for_its_parent_and_the_gap() -> None:
    trace = [
        _req(0, 0.0, (1, 2), 1000, osl=3),
        _req(1, 10.0, (1, 2, 3), 1500, parent=0, delay_ms=250.0, session_id="s"),
        _req(2, 99_999.0, (1, 2, 3, 4), 2000, parent=1, delay_ms=0.0, session_id="s"),
    ]
    recs = run_replay(trace, ClusterConfig(num_workers=2), RoundRobinPolicy())
    assert [r.index for r in recs] == [0, 1, 2]
    assert recs[1].arrival_ms == pytest.approx(recs[0].finish_ms + 250.0)
    assert recs[2].arrival_ms == 99_999.0  # its own arrival is later than the parent's finish
    assert recs[1].session_id == "s"


def test_bad_dependencies_and_bad_choices_are_errors() -> None:
    cluster = ClusterConfig(num_workers=2)
    with pytest.raises(ValueError, match="parent 7"):
        run_replay([_req(0, 0, (1,), 100, parent=7)], cluster, RoundRobinPolicy())
    with pytest.raises(ValueError, match="chose worker 5"):
        run_replay([_req(0, 0, (1,), 100)], cluster, _Fixed(worker=5))
    with pytest.raises(ValueError, match="speeds"):
        ClusterConfig(num_workers=2, speeds=[1.0])
    with pytest.raises(ValueError, match="do not cover"):
        run_replay([_req(0, 0, (1,), 600)], cluster, RoundRobinPolicy())


def test_overlap_appears_when_the_pass_that_computed_it_ends() -> None:
    trace = [_req(0, 0.0, (1, 2, 3), 1536, osl=50), _req(1, 1.0, (1, 2, 3), 1536, osl=2)]
    pol = _Fixed()
    recs = run_replay(trace, ClusterConfig(num_workers=2), pol)
    assert pol.seen[1] == (1.0, [0, 0])  # the first pass (~40 ms) is still running
    late = [_req(0, 0.0, (1, 2, 3), 1536, osl=50), _req(1, 500.0, (1, 2, 3), 1536, osl=2)]
    pol = _Fixed()
    recs = run_replay(late, ClusterConfig(num_workers=2), pol)
    assert pol.seen[1] == (500.0, [24, 0])
    assert recs[1].reused_tokens == 1536 - 64  # a full hit still recomputes its last block
    # delivered 600 ms late, the router has not seen it yet at 500 ms
    pol = _Fixed()
    run_replay(late, ClusterConfig(num_workers=2, kv_event_lag_ms=600.0), pol)
    assert pol.seen[1] == (500.0, [0, 0])


def test_overlap_of_a_request_asked_again_follows_the_kv_events_since() -> None:
    """A held request is decided again later (admission); its overlap must be the index's
    of that moment, as a live KvRouter answers each get_potential_loads afresh."""
    cluster = ClusterConfig(num_workers=2)
    index = KvIndex(2)
    view = ClusterView(cluster, [], index)
    blocks = block_hashes_of(_req(0, 0.0, (1, 2), 1024), cluster)
    req = SimRequest("r0", _req(0, 0.0, (1, 2), 1024), blocks, 0.0, -1, blocks.tolist())
    assert view.overlap_blocks(req).tolist() == [0, 0]
    index.apply(1, blocks.tolist()[:10])  # worker 1 stores 10 of its blocks
    assert view.overlap_blocks(req).tolist() == [0, 10]
    index.apply(1, [~h for h in blocks.tolist()[5:10]])  # and evicts 5 of them
    assert view.overlap_blocks(req).tolist() == [0, 5]


def test_feedback_reaches_the_policy_at_engine_times() -> None:
    trace = [_req(0, 0.0, (1, 2), 1000, osl=5)]
    pol = _Fixed()
    (rec,) = run_replay(trace, ClusterConfig(num_workers=1), pol)
    assert pol.first == [("r0", rec.first_token_ms)]
    assert pol.done == [("r0", rec.finish_ms)]
    assert rec.ttft_ms == rec.first_token_ms - rec.arrival_ms
    assert rec.itl_ms == pytest.approx((rec.finish_ms - rec.first_token_ms) / 4)


def _synthetic(n: int, seed: int = 3) -> list[TraceRequest]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sess = int(rng.integers(0, 12))
        depth = int(rng.integers(1, 8))
        hashes = (0, *(1000 * sess + k for k in range(depth)))
        isl = 512 * len(hashes) - int(rng.integers(0, 500))
        out.append(_req(i, 40.0 * i, hashes, isl, osl=int(rng.integers(1, 60))))
    return out


def test_same_seed_gives_identical_records() -> None:
    trace = _synthetic(200)
    cluster = ClusterConfig(num_workers=4, num_gpu_blocks=600)
    a = run_replay(trace, cluster, KvPortPolicy(seed=7))
    b = run_replay(trace, cluster, KvPortPolicy(seed=7))
    assert a == b


def test_kv_port_reuses_more_than_round_robin() -> None:
    trace = _synthetic(300)
    cluster = ClusterConfig(num_workers=4, num_gpu_blocks=600)

    def reuse(recs: list[RequestRecord]) -> float:
        return sum(r.reused_tokens for r in recs) / sum(r.input_length for r in recs)

    rr = reuse(run_replay(trace, cluster, RoundRobinPolicy()))
    kv = reuse(run_replay(trace, cluster, KvPortPolicy(seed=1)))
    assert kv > rr + 0.05


def test_kv_port_cost_matches_dynamos_formula() -> None:
    cluster = ClusterConfig(num_workers=3)
    first = _req(0, 0.0, (5, 6), 1024, osl=100)
    pol = KvPortPolicy(seed=0)
    costs: list[np.ndarray] = []

    class _Spy(KvPortPolicy):
        def route(self, req: SimRequest, view: ClusterView) -> int:
            costs.append(self.costs(req, view))
            return super().route(req, view)

    pol = _Spy(seed=0)
    run_replay([first, _req(1, 500.0, (5, 6, 7), 1536, osl=2)], cluster, pol)
    # an empty cluster: prompt blocks as prefill plus the same blocks as new decode blocks
    assert costs[0].tolist() == [16 + 16] * 3
    # 500 ms later the first request is decoding on its worker w: 16 blocks cached there,
    # 16 of the new request's 24 blocks already active there
    w = int(np.argmin(costs[1]))
    assert costs[1][w] == (1536 / 64 - 16) + (16 + 8)
    assert sorted(costs[1].tolist()) == [32.0, 48.0, 48.0]


def test_affinity_keeps_a_session_on_its_worker_until_the_ttl_lapses() -> None:
    trace = [
        _req(0, 0.0, (1, 2), 1024, osl=2, session_id="s"),
        # same prompt, no session: the KV router follows the cache, then it decodes for long
        _req(1, 500.0, (1, 2), 1024, osl=2000),
        # the session again, with a prompt cached nowhere: plain KV avoids the busy worker
        _req(2, 3_000.0, (7, 8), 1024, osl=2, session_id="s"),
    ]
    cluster = ClusterConfig(num_workers=4)
    plain = run_replay(trace, cluster, KvPortPolicy(seed=0))
    assert plain[1].worker == plain[0].worker and plain[2].worker != plain[0].worker
    sticky = run_replay(trace, cluster, KvAffinityPolicy(seed=0, ttl_s=60.0))
    assert sticky[2].worker == sticky[0].worker
    lapsed = run_replay(trace, cluster, KvAffinityPolicy(seed=0, ttl_s=1.0))
    assert lapsed[2].worker != lapsed[0].worker


def test_a_faster_worker_serves_the_same_request_sooner() -> None:
    trace = [_req(0, 0.0, (1, 2, 3), 1500, osl=20), _req(1, 0.0, (4, 5, 6), 1500, osl=20)]
    recs = run_replay(trace, ClusterConfig(num_workers=2, speeds=[1.0, 4.0]), RoundRobinPolicy())
    assert recs[1].e2e_ms == pytest.approx(recs[0].e2e_ms / 4, rel=1e-3)
