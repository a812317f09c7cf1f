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
