"""The processor's admission loop leaves its queue clean whatever ends a held request's wait."""

from __future__ import annotations

import pytest

from processor.admission import Admission
from processor.metrics import ProcessorMetrics
from router.policy import Decision, RouteRequest
from router.unavailable import Unavailable


def _decision(request_id: str, reason: str, worker_id: int) -> Decision:
    return Decision(request_id, worker_id, reason, [], [], 0.0)  # type: ignore[arg-type]


async def test_a_held_request_whose_retry_fails_leaves_the_queue() -> None:
    """Before: only a cancelled wait left the queue; a retry that raised (the shared router
    gone or silent: 503 no_router / router_timeout) left its entry there for good, at the
    head, so every later new conversation was held behind it until its own deadline."""
    admission = Admission(deadline_s=30.0, metrics=ProcessorMetrics())
    calls = []

    async def decide(route: RouteRequest) -> Decision:
        calls.append(route.request_id)
        if len(calls) == 1:
            return _decision(route.request_id, "held", -1)  # every worker full: held
        raise Unavailable("router_timeout", 5, "no decision")

    with pytest.raises(Unavailable):
        await admission.place(RouteRequest(request_id="a", prompt_tokens=8), decide)
    q = admission.queue
    assert q is not None and len(q) == 0 and q.head() is None
    # A new conversation is tried with the whole deadline again, not queued behind a ghost.
    assert q.arrival_budget_ms() == 30_000.0
