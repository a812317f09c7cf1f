"""Decisions awaiting latency feedback, and the translation of feedback into learning.

Each routed request leaves a ``Pending`` record (chosen worker, the features the bandit saw,
the model's predicted TTFT, a deadline). ``report()`` turns the measured TTFT/ITL into
standardized residuals for the bandit (router/bandit.py); a failed request is learned as a
TTFT of ``FAILURE_PENALTY_MS``. Records whose feedback never arrives are expired by
``sweep(now)``: with ``TIMEOUT_PENALTY_MS`` when the worker never sent a first token, and
without learning when it did (the worker answered; only the request's end went unreported,
e.g. a generation longer than the timeout). The sweep runs in a background task, never on the
request path (the prior art swept inline, per request).

Bounded: at most ``MAX_PENDING_FEEDBACK`` records; when full the oldest is dropped without
learning (counted in ``dropped``). Insertion order equals deadline order (one timeout for
all), so the sweep only ever looks at the front of an ``OrderedDict``.

Load (requests in flight, queued prefill, decode blocks) is not counted here: that is
``router.load.LoadTracker``'s one job, fed by the same start / first token / finish events.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from router.bandit import ITL_SCALE_MS, TTFT_SCALE_MS, WorkerBandit
from router.config import RouterConfig
from router.cost import engine_prefill_ms

MAX_PENDING_FEEDBACK = 100_000
SWEEP_BATCH = 2048  # decisions expired per sweep call at most, keeping each sweep short
TIMEOUT_PENALTY_MS = 5000.0  # TTFT learned for a request whose feedback never came
FAILURE_PENALTY_MS = 2000.0  # TTFT learned for a request reported as failed


class Pending:
    """One decision waiting for feedback."""

    __slots__ = (
        "answered",
        "deadline",
        "features",
        "predicted_ttft_ms",
        "queued_tokens",
        "worker_id",
    )

    def __init__(
        self,
        worker_id: int,
        features: np.ndarray,
        queued_tokens: float,
        predicted_ttft_ms: float,
        deadline: float,
    ) -> None:
        self.worker_id = worker_id
        self.features = features  # bandit features of the chosen worker at decision time
        self.queued_tokens = queued_tokens  # to re-predict TTFT with the observed cache hit
        self.predicted_ttft_ms = predicted_ttft_ms
        self.deadline = deadline  # monotonic seconds
        self.answered = False  # the worker's first token came


class FeedbackTracker:
    """Bounded pending-feedback store feeding a ``WorkerBandit``."""

    def __init__(self, cfg: RouterConfig, bandit: WorkerBandit) -> None:
        self.cfg = cfg
        self.bandit = bandit
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self.dropped = 0  # evicted because the store was full
        self.timeouts = 0  # expired by sweep (penalised only when never answered)
        self.failures = 0  # reported ok=False
        self.reports = 0  # reported ok=True with a TTFT: learned from
        # Reported ok=True without a TTFT (a whole, non-streamed answer): the worker served it,
        # but nothing was timed, so the learner is not told anything (not a failure).
        self.unmeasured = 0
        self.unknown_reports = 0  # report for an id we do not hold (late, dropped, foreign)

    def __len__(self) -> int:
        return len(self._pending)

    def add(
        self,
        request_id: str,
        worker_id: int,
        features: np.ndarray,
        queued_tokens: float,
        predicted_ttft_ms: float,
        now: float,
    ) -> None:
        # A retried request id supersedes the old decision (pop, then insert at the end).
        self._pending.pop(request_id, None)
        self._pending[request_id] = Pending(
            worker_id, features, queued_tokens, predicted_ttft_ms, now + self.cfg.feedback_timeout_s
        )
        if len(self._pending) > MAX_PENDING_FEEDBACK:
            self._pending.popitem(last=False)
            self.dropped += 1

    def report(
        self,
        request_id: str,
        ttft_ms: float | None,
        itl_ms: float | None,
        uncached_tokens: int | None = None,
        output_tokens: int = 0,
        ok: bool = True,
    ) -> bool:
        """Learn from one finished request. Returns False if the id is unknown."""
        p = self._pending.pop(request_id, None)
        if p is None:
            self.unknown_reports += 1
            return False
        cfg = self.cfg
        x = p.features
        predicted = p.predicted_ttft_ms
        if uncached_tokens is not None:
            # The engine told us the real cache hit: explain TTFT with it, so the residual
            # measures the worker's speed, not our overlap estimate's error.
            predicted = float(engine_prefill_ms(cfg, uncached_tokens + p.queued_tokens))
            x = x.copy()
            x[1] = predicted / TTFT_SCALE_MS
        if ok and ttft_ms is None:
            self.unmeasured += 1
            return True
        if not ok:
            self.failures += 1
            self.bandit.update(
                p.worker_id, x, "ttft", (FAILURE_PENALTY_MS - predicted) / TTFT_SCALE_MS
            )
            return True
        self.reports += 1
        self.bandit.update(p.worker_id, x, "ttft", (ttft_ms - predicted) / TTFT_SCALE_MS)
        if itl_ms is not None and output_tokens > 1:
            self.bandit.update(p.worker_id, x, "itl", itl_ms / ITL_SCALE_MS)
        return True

    def first_token(self, request_id: str) -> None:
        """The worker answered: a timeout of this record no longer says it is slow."""
        p = self._pending.get(request_id)
        if p is not None:
            p.answered = True

    def discard(self, request_id: str) -> bool:
        """Forget a decision without learning from it (the client went away: says nothing
        about the worker)."""
        return self._pending.pop(request_id, None) is not None

    def sweep(self, now: float, batch: int | None = None) -> int:
        """Expire up to ``batch`` overdue decisions, with the timeout penalty where the
        worker never answered."""
        batch = batch or SWEEP_BATCH
        n = 0
        pending = self._pending
        while pending and n < batch:
            rid, p = next(iter(pending.items()))
            if p.deadline > now:
                break
            del pending[rid]
            self.timeouts += 1
            n += 1
            if p.answered:
                continue
            self.bandit.update(
                p.worker_id,
                p.features,
                "ttft",
                (TIMEOUT_PENALTY_MS - p.predicted_ttft_ms) / TTFT_SCALE_MS,
            )
        return n
