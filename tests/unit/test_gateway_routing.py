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
from router.service import FindWorker, RouterService

W1, W2 = 11, 22


def test_query_body_asks_for_tokens_and_keeps_the_request() -> None:
    body = {"model": "m", "messages": [], "stream": False, "nvext": {"annotations": ["a"]}}
    q = query_body(body)
    assert q["stream"] is True and q["nvext"]["annotations"] == ["a", QUERY_ANNOTATION]
    assert body["nvext"]["annotations"] == ["a"] and body["stream"] is False  # not mutated


def test_pinned_body_carries_tokens_and_worker() -> None:
    body = {"model": "m", "nvext": {"annotations": ["a"], "token_data": [9], "backend_instance_id": 1}}
    p = pinned_body(body, [1, 2, 3], W2)
    assert p["nvext"] == {"annotations": ["a"], "token_data": [1, 2, 3], "backend_instance_id": W2}
    assert body["nvext"]["token_data"] == [9]  # a client's own values never survive
    sneaky = {"nvext": {"annotations": ["query_instance_id:", "query_instance_id", "keep"]}}
    assert pinned_body(sneaky, [1], W1)["nvext"]["annotations"] == ["keep"]


def test_tokens_from_query_reads_the_first_event_with_tokens() -> None:
    payload = (b'data: {"id":"x","choices":[],"nvext":{"worker_id":{"prefill_worker_id":5},'
               b'"token_ids":[1,339,201]}}\n\ndata: [DONE]\n\n')
    assert tokens_from_query(payload) == [1, 339, 201]
    assert tokens_from_query(b"data: {broken\n\ndata: [DONE]\n\n") is None
    assert tokens_from_query(b'data: {"choices":[]}\n\n') is None


def _routed(gr: GatewayRouting, rid: str) -> Routed:
    route = RouteRequest(request_id=rid, prefix_id="p", prompt_tokens=640, total_requests=4)
    rows = [{"worker_id": w, "dp_rank": 0, "potential_prefill_tokens": 640,
             "potential_decode_blocks": 10, "active_requests": 0} for w in (W1, W2)]
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

    gr = GatewayRouting("ns.c.e", 64, service=RouterService(RouterConfig(block_size=64)),
                        sticky_fast_path=True)
    gr.routing = LocalRouting(gr.service, kv_router=None)
    gr._client = _Instances([W1, W2])  # noqa: SLF001 - the live workers, as discovery has them
    hints = AgentHints(prefix_id="conv", total_requests=5)
    body = {"messages": [{"role": "user", "content": "y" * 1200}]}
    assert gr.decide_sticky(body, hints) is None  # nothing learned, conversation unknown
    gr.learn_tokens_per_char({"messages": [{"role": "user", "content": "x" * 1000}]}, 500)
    gr.learn_tokens_per_char({"messages": [{"role": "user", "content": "hi"}]}, 11)  # ignored
    assert gr.tokens_per_char == 0.5
    assert gr.decide_sticky(body, hints) is None  # the router has not placed it yet
    # First turn, full path: W2 holds the shared prefix.
    route = RouteRequest(request_id="t0", prefix_id="conv", prompt_tokens=512, total_requests=5)
    rows = [{"worker_id": W1, "dp_rank": 0, "potential_prefill_tokens": 512,
             "potential_decode_blocks": 8, "active_requests": 0},
            {"worker_id": W2, "dp_rank": 0, "potential_prefill_tokens": 0,
             "potential_decode_blocks": 8, "active_requests": 0}]
    first = gr.service.find_worker(FindWorker(request=route, rows=rows), time.monotonic())
    assert first.worker_id == W2
    routed = gr.decide_sticky(body, hints)
    assert routed is not None and routed.tokens_source == "estimate"
    assert routed.decision.worker_id == W2 and routed.prompt_tokens == 600
    assert routed.uncached_tokens < 600  # the home is credited with the last prompt's blocks
