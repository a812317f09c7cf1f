"""A standalone router's feedback that never arrives is counted and exported."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import generate_latest

from processor.metrics import ProcessorMetrics
from processor.routing import RemoteRouting
from router.service import Feedback, RouterService


class FailingEndpoint:
    async def round_robin(self, payload: Any, annotated: bool = False) -> Any:
        raise ConnectionError("router gone")


async def test_undelivered_feedback_is_counted_and_exported() -> None:
    routing = RemoteRouting(FailingEndpoint(), FailingEndpoint(), kv_router=None)
    routing.feedback(Feedback(event="finish", request_id="a"))
    for _ in range(100):
        if routing.feedback_dropped:
            break
        await asyncio.sleep(0.01)
    swept = routing.maintain(0.0)
    assert swept["feedback_dropped"] == 1
    metrics = ProcessorMetrics()
    metrics.sync_feedback_dropped(swept["feedback_dropped"])
    metrics.sync_feedback_dropped(swept["feedback_dropped"])  # a count since start: no double
    text = generate_latest(metrics.registry).decode()
    assert "akr_processor_router_feedback_dropped_total 1.0" in text


class _GoneRouter(FailingEndpoint):
    """What Dynamo's client does once the router component left discovery."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def instance_ids(self) -> list[int]:
        return self.ids

    async def round_robin(self, payload: Any, annotated: bool = False) -> Any:
        raise Exception("Unavailable: No workers available for endpoint agents/router/find_worker")


class _Kv:
    async def get_potential_loads(self, token_ids: list[int]) -> list[dict[str, Any]]:
        return []


async def test_without_the_router_component_requests_are_unavailable_not_errors() -> None:
    """The standalone router is gone (killed, restarting): every decision fails. That is
    'retry later' (503 with Retry-After at the gateway), not a 500 'Internal server error'."""
    import pytest

    from router.policy import RouteRequest
    from router.unavailable import Unavailable, parse_unavailable

    find = _GoneRouter()
    routing = RemoteRouting(find, FailingEndpoint(), kv_router=_Kv())
    route = RouteRequest(request_id="r", prompt_tokens=10)
    with pytest.raises(Unavailable) as err:
        await routing.decide(route, [1, 2, 3], frozenset({7}))
    assert parse_unavailable(str(err.value))[0] == "no_router"
    assert not routing.has_router()
    # Killed: the client knows at once, discovery lists it until its lease ends (~10 s)
    find.ids = [1]
    with pytest.raises(Unavailable):
        await routing.decide(route, [1, 2, 3], frozenset({7}))

    async def refused(payload: Any, annotated: bool = False) -> Any:
        raise Exception("Unavailable: TCP connection to 127.0.0.1:33533 failed")

    find.round_robin = refused
    with pytest.raises(Unavailable):
        await routing.decide(route, [1, 2, 3], frozenset({7}))
    find.round_robin = FailingEndpoint().round_robin  # another failure: the error stands
    with pytest.raises(ConnectionError):
        await routing.decide(route, [1, 2, 3], frozenset({7}))


def test_health_is_not_ready_without_the_router_component() -> None:
    """Workers routable but no router to place requests: every request fails, so /health must
    not say ready (the gateway's readiness follows it)."""
    import time

    from tests.unit.test_departed_workers import sweeping_handler

    find = _GoneRouter()
    find.ids = [1]
    routing = RemoteRouting(find, FailingEndpoint(), kv_router=_Kv())
    h = sweeping_handler(lambda: [7, 8], routing, frozenset({7, 8}))
    h._sweep_once()
    assert h.health.answer(time.monotonic())[0] == 200
    find.ids = []  # the router left discovery
    h._sweep_once()
    status, body = h.health.answer(time.monotonic())
    assert status == 503 and body["status"] == "no_router", body
    assert body["routable_workers"] == 2


def test_the_router_gauge_follows_the_shared_router_in_discovery() -> None:
    """``akr_processor_router_available`` (the AkrRouterUnavailable alert) is 0 exactly while
    no shared router is in discovery, whatever the traffic; an in-process router is always 1."""
    from processor.routing import LocalRouting
    from tests.unit.test_departed_workers import sweeping_handler

    find = _GoneRouter()
    routing = RemoteRouting(find, FailingEndpoint(), kv_router=_Kv())
    h = sweeping_handler(lambda: [7], routing, frozenset({7}))
    seen = []
    for ids in ([1], [], [2]):
        find.ids = ids
        h._sweep_once()
        seen.append(h.metrics.router_available._value.get())
    assert seen == [1.0, 0.0, 1.0]
    service = RouterService(block_size=64)
    h = sweeping_handler(lambda: [], LocalRouting(service, kv_router=None), frozenset())
    h.service = service
    h._sweep_once()
    assert h.metrics.router_available._value.get() == 1.0


class _SharedRouter:
    """A shared router's endpoint (find_worker or feedback) that answers at once, or, while
    ``silent``, never: before acknowledging the request (``"send"``: frozen) or after
    (``"answer"``: a stuck event loop). Counts the calls it saw and the waits cancelled."""

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer
        self.silent: str | None = None
        self.payloads: list[Any] = []
        self.cancelled = 0

    def instance_ids(self) -> list[int]:
        return [1]

    async def round_robin(self, payload: Any, annotated: bool = False) -> Any:
        self.payloads.append(payload)
        if self.silent == "send":
            await self._forever()
        return self._stream(self.silent == "answer")

    async def _stream(self, hang: bool) -> Any:
        if hang:
            await self._forever()
        if self.answer is not None:
            yield self.answer

    async def _forever(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def _decision_answer(request_id: str) -> dict[str, Any]:
    import msgspec

    from router.policy import Decision

    return msgspec.to_builtins(Decision(request_id, 7, "load", [], [], 1.0))


async def _settle(routing: RemoteRouting | None = None) -> None:
    """Let the feedback and probe calls the routing spawned run (with ``routing``: to their
    end, deadline included)."""
    if routing is not None:
        await asyncio.gather(*routing._sending, return_exceptions=True)
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_router_that_does_not_answer_gets_a_deadline(monkeypatch) -> None:
    """Before: a router in discovery that never answered (frozen, stuck loop) held every
    request that needed a decision. Now the call ends at ROUTER_TIMEOUT_S, really cancelled,
    as 503 router_timeout; the decision given up is cancelled once the router answers again."""
    import pytest

    import processor.routing as routing_mod
    from router.policy import RouteRequest
    from router.unavailable import Unavailable, parse_unavailable

    monkeypatch.setattr(routing_mod, "ROUTER_TIMEOUT_S", 0.01)  # the router never answers
    find, feedback = _SharedRouter(_decision_answer("r")), _SharedRouter()
    routing = RemoteRouting(find, feedback, kv_router=_Kv())
    for n, stage in enumerate(("send", "answer"), start=1):
        find.silent = stage
        with pytest.raises(Unavailable) as err:
            await routing.decide(RouteRequest(request_id=f"r{n}", prompt_tokens=8), [1], {7})
        assert parse_unavailable(str(err.value)) == ("router_timeout", 5)
        assert find.cancelled == n  # the wait for the router was cancelled, not left behind
    assert routing.unanswered == 2
    assert routing.unavailable_reason() == "router_timeout"
    await _settle(routing)
    assert feedback.payloads == []  # no cancel sent to a router that does not read

    # Known silent: the next request fails at once, without asking (or waiting) again.
    with pytest.raises(Unavailable):
        await routing.decide(RouteRequest(request_id="r3", prompt_tokens=8), [1], {7})
    assert len(find.payloads) == 2

    # The sweep probes it; the router answers: it counts as answering again, and both
    # decisions given up are cancelled at the router.
    find.silent = None
    routing.maintain(0.0)
    await _settle(routing)
    assert routing.unanswered == 0 and routing.unavailable_reason() is None
    probe, *cancels = feedback.payloads
    assert probe == routing_mod.PROBE
    assert cancels == [
        {"event": "finish", "request_id": rid, "cancelled": True} for rid in ("r1", "r2")
    ]
    decision = await routing.decide(RouteRequest(request_id="r4", prompt_tokens=8), [1], {7})
    assert decision.worker_id == 7
    assert routing.feedback_dropped == 0 and not routing._sending


async def test_a_silent_router_is_probed_one_call_at_a_time(monkeypatch) -> None:
    """The sweep runs every second; a probe outlives it by up to ROUTER_TIMEOUT_S: at most
    one is in flight, and each one left unanswered counts."""
    import processor.routing as routing_mod

    monkeypatch.setattr(routing_mod, "ROUTER_TIMEOUT_S", 30.0)  # still waiting below
    feedback = _SharedRouter()
    feedback.silent = "answer"
    routing = RemoteRouting(_SharedRouter(), feedback, kv_router=_Kv())
    routing.maintain(0.0)  # nothing unanswered: no probe
    await _settle()
    assert feedback.payloads == []
    routing.unanswered = 1
    for _ in range(3):
        routing.maintain(0.0)
        await _settle()
    assert feedback.payloads == [routing_mod.PROBE]
    for task in list(routing._sending):
        task.cancel()
    await _settle()
    assert not routing._sending


async def test_health_and_gauge_say_router_timeout_until_it_answers(monkeypatch) -> None:
    """/health (so the gateway's readiness) and akr_processor_router_available (the
    AkrRouterUnavailable alert) follow a router that stops answering, and its return."""
    import time

    import processor.routing as routing_mod
    from tests.unit.test_departed_workers import sweeping_handler

    monkeypatch.setattr(routing_mod, "ROUTER_TIMEOUT_S", 0.01)
    feedback = _SharedRouter()
    feedback.silent = "answer"
    routing = RemoteRouting(_SharedRouter(), feedback, kv_router=_Kv())
    h = sweeping_handler(lambda: [7], routing, frozenset({7}))
    routing.unanswered = 1  # one decision timed out: not yet "not answering"
    h._sweep_once()
    assert h.health.answer(time.monotonic())[0] == 200
    await _settle(routing)  # the sweep's probe is left unanswered too
    h._sweep_once()
    status, body = h.health.answer(time.monotonic())
    assert status == 503 and body["status"] == "router_timeout", body
    assert h.metrics.router_available._value.get() == 0.0
    await _settle(routing)  # (the probe that sweep started, unanswered)
    feedback.silent = None  # it answers the next probe
    h._sweep_once()
    await _settle(routing)
    h._sweep_once()
    assert h.health.answer(time.monotonic())[0] == 200
    assert h.metrics.router_available._value.get() == 1.0
