"""Pure parts of routing in the gateway (frontend/routing.py): bodies, token parsing, feedback."""

from __future__ import annotations

import time

from frontend.routing import (
    QUERY_ANNOTATION,
    GatewayRouting,
    Routed,
    pinned_body,
    query_body,
    tokens_from_query,
)
from processor.routing import LocalRouting
from router.config import RouterConfig
from router.policy import RouteRequest
from router.service import Feedback, FindWorker, RouterService

W1, W2 = 11, 22


def test_query_body_asks_for_tokens_and_keeps_the_request() -> None:
    body = {"model": "m", "messages": [], "stream": False, "nvext": {"annotations": ["a"]}}
    q = query_body(body)
    assert q["stream"] is True and q["nvext"]["annotations"] == ["a", QUERY_ANNOTATION]
    assert body["nvext"]["annotations"] == ["a"] and body["stream"] is False  # not mutated


def test_pinned_body_carries_tokens_and_worker() -> None:
    body = {
        "model": "m",
        "nvext": {"annotations": ["a"], "token_data": [9], "backend_instance_id": 1},
    }
    p = pinned_body(body, [1, 2, 3], W2)
    assert p["nvext"] == {"annotations": ["a"], "token_data": [1, 2, 3], "backend_instance_id": W2}
    assert body["nvext"]["token_data"] == [9]  # a client's own values never survive
    sneaky = {"nvext": {"annotations": ["query_instance_id:", "query_instance_id", "keep"]}}
    assert pinned_body(sneaky, [1], W1)["nvext"]["annotations"] == ["keep"]


def test_tokens_from_query_reads_the_first_event_with_tokens() -> None:
    payload = (
        b'data: {"id":"x","choices":[],"nvext":{"worker_id":{"prefill_worker_id":5},'
        b'"token_ids":[1,339,201]}}\n\ndata: [DONE]\n\n'
    )
    assert tokens_from_query(payload) == [1, 339, 201]
    assert tokens_from_query(b"data: {broken\n\ndata: [DONE]\n\n") is None
    assert tokens_from_query(b'data: {"choices":[]}\n\n') is None


def _routed(gr: GatewayRouting, rid: str) -> Routed:
    route = RouteRequest(request_id=rid, prefix_id="p", prompt_tokens=640, total_requests=4)
    rows = [
        {
            "worker_id": w,
            "dp_rank": 0,
            "potential_prefill_tokens": 640,
            "potential_decode_blocks": 10,
            "active_requests": 0,
        }
        for w in (W1, W2)
    ]
    decision = gr.service.find_worker(FindWorker(request=route, rows=rows), time.monotonic())
    return Routed(decision, 640, 640, query_ms=1.0, decision_ms=0.5, t_sent=time.perf_counter())


def test_whole_answer_frees_load_without_teaching_a_failure() -> None:
    gr = GatewayRouting("ns.c.e", 64, service=RouterService(RouterConfig(block_size=64)))
    gr.routing = LocalRouting(gr.service, kv_router=None)
    routed = _routed(gr, "whole")
    assert gr.service.load.busy()
    gr.finish(routed, 200)  # non-streamed: no chunk was observed, so no TTFT
    assert not gr.service.load.busy()
    assert gr.service.router.feedback.failures == 0 and gr.service.router.feedback.reports == 0


def test_streamed_answer_reports_ttft_and_tokens() -> None:
    gr = GatewayRouting("ns.c.e", 64, service=RouterService(RouterConfig(block_size=64)))
    gr.routing = LocalRouting(gr.service, kv_router=None)
    routed = _routed(gr, "streamed")
    for chunk in (b"data: {}\n\n", b"data: {}\n\ndata: {}\n\n", b"data: [DONE]\n\n"):
        gr.observe(routed, chunk)
    assert routed.chunks == 4 and routed.ttft_ms is not None and routed.itl_ms is not None
    gr.finish(routed, 200)
    assert not gr.service.load.busy()
    assert gr.service.router.feedback.reports == 1 and gr.service.router.feedback.failures == 0


class _Instances:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def instance_ids(self) -> list[int]:
        return self.ids


def test_sticky_fast_path_sends_a_known_conversation_home_without_tokens() -> None:
    from router.hints import AgentHints

    gr = GatewayRouting(
        "ns.c.e", 64, service=RouterService(RouterConfig(block_size=64)), sticky_fast_path=True
    )
    gr.routing = LocalRouting(gr.service, kv_router=None)
    gr._client = _Instances([W1, W2])
    hints = AgentHints(prefix_id="conv", total_requests=5)
    body = {"messages": [{"role": "user", "content": "y" * 1200}]}
    assert gr.decide_sticky(body, hints) is None  # nothing learned, conversation unknown
    gr.learn_tokens_per_char({"messages": [{"role": "user", "content": "x" * 1000}]}, 500)
    gr.learn_tokens_per_char({"messages": [{"role": "user", "content": "hi"}]}, 11)  # ignored
    assert gr.tokens_per_char == 0.5
    assert gr.decide_sticky(body, hints) is None  # the router has not placed it yet
    # First turn, full path: W2 holds the shared prefix.
    route = RouteRequest(request_id="t0", prefix_id="conv", prompt_tokens=512, total_requests=5)
    rows = [
        {
            "worker_id": W1,
            "dp_rank": 0,
            "potential_prefill_tokens": 512,
            "potential_decode_blocks": 8,
            "active_requests": 0,
        },
        {
            "worker_id": W2,
            "dp_rank": 0,
            "potential_prefill_tokens": 0,
            "potential_decode_blocks": 8,
            "active_requests": 0,
        },
    ]
    first = gr.service.find_worker(FindWorker(request=route, rows=rows), time.monotonic())
    assert first.worker_id == W2
    assert gr.decide_sticky(body, hints) is None  # placed, but its blocks are not known here
    gr.sessions.remember("conv", list(range(1, 9)))  # what decide() stores on the full path
    routed = gr.decide_sticky(body, hints)
    assert routed is not None and routed.tokens_source == "estimate"
    assert routed.decision.worker_id == W2 and routed.prompt_tokens == 600
    assert routed.uncached_tokens < 600  # the home is credited with the last prompt's blocks


def _placed_conversation(gr: GatewayRouting, prefix_id: str, home: int, hashes: list[int]) -> None:
    """A first turn the full path placed on ``home`` and whose blocks it remembered."""
    route = RouteRequest(
        request_id=f"{prefix_id}-0",
        prefix_id=prefix_id,
        prompt_tokens=64 * len(hashes),
        total_requests=5,
        block_hashes=hashes,
    )
    rows = [
        {
            "worker_id": w,
            "dp_rank": 0,
            "potential_prefill_tokens": 0 if w == home else 64 * len(hashes),
            "potential_decode_blocks": len(hashes),
            "active_requests": 0,
        }
        for w in (W1, W2)
    ]
    d = gr.service.find_worker(FindWorker(request=route, rows=rows), time.monotonic())
    assert d.worker_id == home
    gr.service.feedback(
        Feedback(event="finish", request_id=d.request_id, ttft_ms=None, itl_ms=None, ok=True)
    )
    gr.sessions.remember(prefix_id, hashes)


def test_fast_path_requests_count_for_the_kv_full_term() -> None:
    """Two conversations live on W2, whose KV holds 40 blocks. Conversation A's next turn
    (~30 blocks) is in flight there; B's next turn (~30 blocks) would not fit beside it, so B
    goes to W1 despite its home. Before its blocks were known (hashes: none), A's in-flight
    request was invisible to the KV-full term and B followed it onto the full worker."""
    from router.hints import AgentHints

    cfg = RouterConfig(block_size=64, worker_capacity_blocks=40, default_osl=64)
    gr = GatewayRouting("ns.c.e", 64, service=RouterService(cfg), sticky_fast_path=True)
    gr.routing = LocalRouting(gr.service, kv_router=None)
    gr._client = _Instances([W1, W2])
    gr.tokens_per_char = 1.0
    _placed_conversation(gr, "A", W2, list(range(100, 120)))
    _placed_conversation(gr, "B", W2, list(range(200, 220)))
    turn = {"messages": [{"role": "user", "content": "z" * (64 * 30)}]}
    a = gr.decide_sticky(turn, AgentHints(prefix_id="A", total_requests=5))
    assert a is not None and a.decision.worker_id == W2
    load = gr.service.load.get(W2)
    assert load.used_blocks >= 30  # 20 remembered + 10 estimated new + output
    b = gr.decide_sticky(turn, AgentHints(prefix_id="B", total_requests=5))
    assert b is not None and b.decision.worker_id == W1
    # The next turn of A starts with what this one was given (remembered, then extended).
    given = gr.service.load._active[a.decision.request_id].hashes
    assert len(given) == 30 and list(given[:20]) == list(range(100, 120))
    assert gr.sessions.extend("A", 31)[:30] == list(given)


def test_routable_leaves_out_failed_and_quarantined_workers() -> None:
    gr = GatewayRouting("ns.c.e", 64, service=RouterService(RouterConfig()), quarantine_s=60.0)
    gr._client = _Instances([W1, W2])
    assert gr.routable() == {W1, W2}
    assert gr.routable(frozenset({W1})) == {W2}  # failed this request
    gr.worker_failed(W2)
    assert gr.routable() == {W1}  # quarantined
    # Quarantine never leaves nothing: with W1 excluded too, W2 is still tried.
    assert gr.routable(frozenset({W1})) == {W2}
    off = GatewayRouting("ns.c.e", 64, service=RouterService(RouterConfig()), quarantine_s=0.0)
    off._client = _Instances([W1, W2])
    off.worker_failed(W2)
    assert off.routable() == {W1, W2}
