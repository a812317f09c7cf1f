"""The admission queue: new conversations wait here while every worker is full.

Under overload a router that places everything turns the engines' queues into minutes of
TTFT for everyone. Instead, a new conversation's first request is admitted only while some
worker's predicted TTFT (queued plus uncached prefill, plus the wait for KV blocks) fits in
what is left of the admission deadline; otherwise it waits here, and at the deadline it is
refused (the client gets 503 with Retry-After). Conversations already running are never
held, so they keep their caches instead of thrashing with newcomers.

Order: higher priority first, then higher latency sensitivity, then arrival. (Least
attained service would order nothing here: only first requests are held, and none has been
served yet.) Only the head is tried, so a large request cannot be overtaken forever by small
ones of the same rank.

Pure and clock-passed: the processor drives it on the event loop's clock, the replay on its
virtual clock. Bounded: at most ``max_len`` entries; a full queue refuses at once (counted).
Entries that left (admitted, cancelled, refused one by one as the processor does) are deleted
lazily from the heap and the deadline order, which are rebuilt once they hold more of those
than of waiting requests.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

QUEUE_MAX = 1024  # held requests at most; a burst beyond it is refused at once
_STALE_SLACK = 64  # entries that left, beyond the waiting ones, before a rebuild


@dataclass(order=True, slots=True)
class Held:
    """One waiting request; ``key`` orders the queue, the rest is not compared."""

    key: tuple[float, float, int]
    request_id: str = field(compare=False)
    since: float = field(compare=False)
    deadline: float = field(compare=False)

    def left_ms(self, now: float) -> float:
        """What is left of its deadline: the budget of its next try."""
        return (self.deadline - now) * 1000.0


@dataclass(slots=True)
class AdmissionStats:
    admitted: int = 0  # held, then admitted
    rejected_full: int = 0
    rejected_deadline: int = 0
    cancelled: int = 0
    wait_s_sum: float = 0.0


class AdmissionQueue:
    """Bounded priority queue of held requests with a deadline each."""

    def __init__(self, deadline_s: float, max_len: int = QUEUE_MAX) -> None:
        self.deadline_s = deadline_s
        self.max_len = max_len
        self._heap: list[Held] = []
        self._live: dict[str, Held] = {}
        self._by_deadline: deque[Held] = deque()  # arrival order = deadline order
        self._seq = 0
        self.stats = AdmissionStats()

    def __len__(self) -> int:
        return len(self._live)

    def arrival_budget_ms(self) -> float:
        """A new request's budget at arrival: the whole deadline, or -1 ms (never fits) while
        others wait, so that it queues behind them instead of overtaking."""
        return self.deadline_s * 1000.0 if not self._live else -1.0

    def push(
        self,
        request_id: str,
        now: float,
        priority: int = 0,
        latency_sensitivity: float = 0.0,
    ) -> Held | None:
        """Hold a request; None when the queue is full (the caller refuses it)."""
        if len(self._live) >= self.max_len:
            self.stats.rejected_full += 1
            return None
        self._seq += 1
        key = (-float(priority), -float(latency_sensitivity), self._seq)
        held = Held(key, request_id, now, now + self.deadline_s)
        heapq.heappush(self._heap, held)
        self._by_deadline.append(held)
        self._live[request_id] = held
        return held

    def head(self) -> Held | None:
        """The request to try next (lazy deletion of entries already gone)."""
        heap = self._heap
        while heap and self._live.get(heap[0].request_id) is not heap[0]:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def admit(self, request_id: str, now: float) -> None:
        """The request was placed: it leaves the queue."""
        held = self._live.pop(request_id, None)
        if held is not None:
            self.stats.admitted += 1
            self.stats.wait_s_sum += now - held.since
            self._compact()

    def cancel(self, request_id: str) -> None:
        """The client went away while waiting."""
        if self._live.pop(request_id, None) is not None:
            self.stats.cancelled += 1
            self._compact()

    def refuse(self, request_id: str) -> None:
        """A waiting request reached its deadline (the live path: each waiter times out)."""
        if self._live.pop(request_id, None) is not None:
            self.stats.rejected_deadline += 1
            self._compact()

    def _compact(self) -> None:
        """Drop entries that left once they outnumber the waiting ones (amortized O(1))."""
        bound = 2 * len(self._live) + _STALE_SLACK
        if len(self._heap) <= bound and len(self._by_deadline) <= bound:
            return
        waiting = sorted(self._live.values(), key=lambda h: h.key[2])  # arrival order
        self._by_deadline = deque(waiting)
        self._heap = list(waiting)
        heapq.heapify(self._heap)

    def _oldest(self) -> Held | None:
        q = self._by_deadline
        while q and self._live.get(q[0].request_id) is not q[0]:
            q.popleft()
        return q[0] if q else None

    def expire(self, now: float) -> list[Held]:
        """Remove and return every request whose deadline has passed (each is refused)."""
        gone: list[Held] = []
        while (h := self._oldest()) is not None and h.deadline <= now:
            self._by_deadline.popleft()
            del self._live[h.request_id]
            gone.append(h)
        self.stats.rejected_deadline += len(gone)
        return gone

    def next_deadline(self) -> float | None:
        """The earliest deadline of a waiting request (for a timer)."""
        h = self._oldest()
        return h.deadline if h is not None else None
