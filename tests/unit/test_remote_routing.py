"""A standalone router's feedback that never arrives is counted and exported."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import generate_latest

from processor.metrics import ProcessorMetrics
from processor.routing import RemoteRouting
from router.service import Feedback


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
