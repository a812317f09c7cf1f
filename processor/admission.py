"""The processor's admission: router/admission.py's queue, waited on the event loop.

``Admission.place`` asks for a decision that may say "held" (a new conversation while every
worker is full); a held request waits in the bounded queue. Only the head asks again, when a
request of this processor got its first token or ended (``notify``) and at least every
``POLL_S`` (KV events and other processors also free room), with what is left of its deadline.
At the deadline, or with the queue full, it raises ``Unavailable`` (503 with Retry-After at the
gateway). A client that goes away while waiting leaves the queue, as does a request whose
try fails (e.g. no shared router to ask).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import msgspec

from processor.metrics import ProcessorMetrics
from router.admission import AdmissionQueue
from router.policy import Decision, RouteRequest
from router.unavailable import Unavailable

POLL_S = 0.05  # longest a head waits between two tries without news from this processor

Decide = Callable[[RouteRequest], Awaitable[Decision]]


class Admission:
    """Admission control of one processor (off when the deadline is 0)."""

    def __init__(self, deadline_s: float, metrics: ProcessorMetrics) -> None:
        self.queue = AdmissionQueue(deadline_s) if deadline_s > 0 else None
        self._metrics = metrics
        self._changed = asyncio.Event()
        self._retry_after_s = max(1, math.ceil(deadline_s))

    def notify(self) -> None:
        """Load may have dropped: wake the waiting head."""
        if self.queue is not None and len(self.queue):
            ev, self._changed = self._changed, asyncio.Event()
            ev.set()

    async def place(self, route: RouteRequest, decide: Decide) -> Decision:
        q = self.queue
        if q is None:
            return await decide(route)
        first = msgspec.structs.replace(route, admit_within_ms=q.arrival_budget_ms())
        decision = await decide(first)
        if decision.reason != "held":
            return decision
        now = time.monotonic()
        held = q.push(route.request_id, now, route.priority, route.latency_sensitivity)
        if held is None:
            self._refuse("queue_full")
        self._metrics.admission_depth.set(len(q))
        try:
            while True:
                left_ms = held.left_ms(time.monotonic())
                if left_ms <= 0:
                    q.refuse(held.request_id)
                    self._refuse("deadline")
                if q.head() is held:
                    try_route = msgspec.structs.replace(route, admit_within_ms=left_ms)
                    decision = await decide(try_route)
                    if decision.reason != "held":
                        waited = time.monotonic() - held.since
                        q.admit(held.request_id, time.monotonic())
                        self._metrics.admission_wait.observe(waited)
                        self.notify()  # the next head may fit too
                        return decision
                changed = self._changed
                try:
                    await asyncio.wait_for(changed.wait(), timeout=min(POLL_S, left_ms / 1000.0))
                except TimeoutError:
                    pass
        except BaseException:  # gone, or a try that raised (no router): leave the queue
            q.cancel(held.request_id)
            raise
        finally:
            self._metrics.admission_depth.set(len(q))

    def _refuse(self, reason: str) -> None:
        """Counted by the handler, with every Unavailable, in akr_processor_unavailable."""
        raise Unavailable(
            f"admission_{reason}",
            self._retry_after_s,
            "every worker is full"
            + (
                " and the admission queue too"
                if reason == "queue_full"
                else f" for the admission deadline of {self._retry_after_s} s"
            ),
        )
