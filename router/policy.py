"""The Router: one routing decision = prefix table lookup + cost model + bandit sample.

``decide(request, signals, now)`` does O(workers) numpy work and a few dict operations:

1. Look up the conversation (``prefix_id``, or without one the conversation inferred from
   the prompt's block hashes by router/lineage.py) in the bounded prefix table (router/
   prefix_table.py): its home worker, remaining reuse budget, pin, last prompt's blocks.
2. History fallback: if no worker reports any KV overlap (workers without KV events, or
   the events lag) but the table saw this conversation on worker ``w`` within
   ``HISTORY_WINDOW_S``, credit ``w`` with the last prompt's blocks as overlap. Where the
   request does not fit beside our requests in flight, only the cache they hold plus the
   room they leave counts (``cost.kept_overlap``): the rest is evicted while it waits.
3. Score every worker with the additive cost model (router/cost.py) plus the bandit's
   sampled latency correction (router/bandit.py).
4. ``pick`` the lowest score that the tail guard and admission allow, ``explain`` why it
   won, record the request in the prefix table (budget, home, pin) and leave a pending
   feedback record (router/feedback.py) for ``report()``.

Reuse budget: the first request of a prefix sets ``remaining = total_requests - 1``; every
later request decrements it; at zero the conversation is released, pin included when the client
said how many requests come. A request without a ``prefix_id`` but with its block hashes
continues the conversation whose latest prompt it extends (router/lineage.py); such a
conversation is expected back once more, after the gap learned over inferred conversations.
Without either, a request is its own conversation: no table entry, no affinity.

Return model: with an ``iat`` hint the conversation claims its home's blocks until its next
request is overdue (``claim_s``); the eviction term charges new work for pushing claimed
blocks out. Tail guard: whatever the affinity, cache or learner say, the chosen worker's
predicted TTFT is at most ``affinity_cap_ms`` behind the best worker's.

Expiry of table entries and feedback timeouts happen in ``sweep(now)``, which the caller
runs from a background task; ``decide`` never sweeps.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import msgspec
import numpy as np

from router import cost
from router.bandit import (
    IDLE_FORGETTING_PER_S,
    ITL_SCALE_MS,
    ITL_WEIGHT,
    TTFT_SCALE_MS,
    WorkerBandit,
    make_features,
)
from router.config import RouterConfig
from router.cost import Candidate
from router.feedback import FeedbackTracker
from router.lineage import Lineage
from router.load import request_blocks
from router.prefix_table import PrefixEntry, PrefixTable
from router.signals import WorkerSignals, aligned

Reason = Literal["sticky", "overlap", "load", "exploration", "pin", "held"]
HISTORY_WINDOW_S = 120.0  # how recent a conversation's placement must be for the fallback
CLAIM_SERVICE_S = 10.0  # a turn's own service time before its gap starts, generously
CLAIM_GAP_SLACK = 2.0  # a client's gap may run this many times its iat hint
TOP_K = 3  # best candidates (with their terms) in a decision and its trace record


def claim_s(iat_ms: float | None) -> float:
    """How long a conversation's home blocks stay claimed after a request: until its next
    request is overdue (the request's own service, then the client's gap, with slack)."""
    if not iat_ms:
        return 0.0
    return CLAIM_SERVICE_S + CLAIM_GAP_SLACK * iat_ms / 1000.0


class RouteRequest(msgspec.Struct, kw_only=True):
    """What the router needs to know about one request (from the agent hints)."""

    request_id: str
    prefix_id: str | None = None  # None: no hints; inferred from block_hashes if sent
    prompt_tokens: int = 0
    total_requests: int = 1  # requests this conversation will make in total
    osl: int | None = None  # expected output tokens; None -> config default_osl
    iat_ms: float | None = None  # expected gap between calls: how long the home is claimed
    latency_sensitivity: float = 0.0  # higher = explore less
    priority: int = 0  # engine queue priority; orders admission's queue, not placement
    pin_ttl_s: float | None = None  # cache_control TTL; keeps the conversation pinned
    # Chained block hashes of the prompt: the KV-full term counts distinct blocks with them
    # (router/load.py), and a request without a prefix_id finds its conversation by them
    # (router/lineage.py). One int per block; None: not sent (no KV-full term, no lineage).
    block_hashes: list[int] | None = None
    # Admission (router/admission.py): a new conversation's first request is placed only if
    # some worker's predicted TTFT is within this many ms, else the decision says "held".
    # None: always placed (continuing turns, admission off).
    admit_within_ms: float | None = None
    # Another attempt at a request already placed (the processor's retry or continuation after
    # a worker failure): the same turn of its conversation, so it moves the home but spends
    # none of the reuse budget and is no new turn of an inferred conversation.
    retry: bool = False


class Decision(msgspec.Struct):
    """The routing decision, with enough context to explain it in a trace.

    ``reason`` (first matching rule wins):

    * ``"pin"``: the chosen worker is the conversation's home, its pin is active, and
      without the affinity term another worker would have scored better.
    * ``"sticky"``: same, but the affinity came from the remaining reuse budget (no pin).
    * ``"exploration"``: the bandit's posterior *sample* changed the choice: with the
      posterior-mean correction instead, another worker would have won.
    * ``"overlap"``: the chosen worker has the largest KV overlap (> 0, incl. the history
      fallback) for this prompt.
    * ``"load"``: otherwise; the worker won on load (and learned speed) with no cache edge.
    * ``"held"``: not placed (``worker_id`` -1): a new conversation under ``admit_within_ms``
      and no worker's predicted TTFT within it; nothing was recorded.
    """

    request_id: str
    worker_id: int
    reason: Reason
    candidates: list[Candidate]  # the best TOP_K workers, best first, with their terms
    features: list[float]  # bandit features of the chosen worker (see bandit.FEATURES)
    predicted_ttft_ms: float  # prefill_ms of the chosen worker (before learning)
    home_worker_id: int | None = None  # conversation's home before this decision
    # Without a prefix id: the conversation inferred from the prompt's lineage ("~<n>").
    inferred_conversation: str | None = None
    reuse_remaining: int = 0  # requests still expected after this one
    pinned: bool = False
    history_fallback: bool = False  # overlap came from the prefix table, not KV events


class NoWorkers(RuntimeError):
    """``decide`` was called with an empty worker set."""


class Conversation(NamedTuple):
    """What the prefix table knows of a request's conversation when it arrives."""

    prefix_id: str | None  # the hinted id, or the inferred one; None: a conversation of one
    inferred: bool  # no prefix id: found (or started) from the prompt's block hashes
    entry: PrefixEntry | None  # the table's entry; None: first request (or expired)
    home: int  # index of the home worker among the candidates; -1: none in the fleet
    pinned: bool  # a cache_control pin is active
    remaining: int  # requests the conversation still expected when this one arrived


def history_overlap(
    conv: Conversation, kv_overlap: np.ndarray, prompt_blocks: int, now: float
) -> np.ndarray:
    """KV overlap per worker; when no worker reports any (workers without KV events, or the
    events lag) but the conversation ran on its home within ``HISTORY_WINDOW_S``, the home is
    credited with its last prompt's blocks (a new array; otherwise ``kv_overlap`` itself)."""
    entry, home = conv.entry, conv.home
    if (
        home < 0
        or entry is None
        or entry.blocks <= 0
        or now - entry.last_seen > HISTORY_WINDOW_S
        or np.count_nonzero(kv_overlap)  # some KV overlap somewhere (cheaper than any())
    ):
        return kv_overlap
    overlap = kv_overlap.copy()
    overlap[home] = min(entry.blocks, prompt_blocks)
    return overlap


def pick(
    cfg: RouterConfig,
    request: RouteRequest,
    new_conversation: bool,
    total: np.ndarray,
    ttft: np.ndarray,
    kv_full: np.ndarray,
    uncached: np.ndarray,
) -> int:
    """Index of the worker with the lowest score ``total`` that the tail guard and admission
    allow; -1 when admission holds the request. ``ttft`` is the predicted TTFT
    (``prefill_ms + kv_full_ms``), ``kv_full`` the ``kv_full_ms`` term.

    Tail guard: no affinity, cache or learned correction buys more than ``affinity_cap_ms``
    of predicted TTFT behind the best worker (never a turn queued behind a hot spot); the
    predicted TTFT includes the wait for KV blocks on a full worker. Admission: a new
    conversation only goes where it starts now, i.e. its blocks fit (no KV wait) and its
    queued plus uncached prefill fits the time left, among the workers the guard allows. Once
    its own prefill on its best worker exceeds the time left, no worker can give it its first
    token within the deadline and holding it longer gains it nothing: only its wait must fit.
    (With the whole deadline as that line, a prompt just under it could be placed only in the
    first instant, and was refused with every worker idle.)"""
    i = int(total.argmin())  # ndarray methods: no np.* dispatch overhead per call
    bound = float(ttft.min()) + cfg.affinity_cap_ms
    if ttft[i] > bound:
        i = int(np.where(ttft <= bound, total, np.inf).argmin())
    if request.admit_within_ms is None or not new_conversation:
        return i
    within = request.admit_within_ms
    own = float(cost.engine_prefill_ms(cfg, uncached.min()))
    beyond = own if own > within else 0.0
    # Only among the workers the tail guard allows: admission never undoes it.
    fits = (kv_full <= 0.0) & (ttft - beyond <= within) & (ttft <= bound)
    if fits[i]:
        return i
    if not fits.any():
        return -1
    return int(np.where(fits, total, np.inf).argmin())


def explain(
    i: int,
    conv: Conversation,
    terms: dict[str, np.ndarray],
    total: np.ndarray,
    overlap: np.ndarray,
    learned_mean: np.ndarray | None,
) -> Reason:
    """Why worker ``i`` won, by the rules in Decision's docstring."""
    affinity, learned = terms["affinity_ms"], terms["learned_ms"]
    if i == conv.home and affinity[i] > 0 and int((total + affinity).argmin()) != i:
        return "pin" if conv.pinned else "sticky"
    if learned_mean is not None and int((total - learned + learned_mean).argmin()) != i:
        return "exploration"
    if overlap[i] > 0 and overlap[i] >= overlap.max():
        return "overlap"
    return "load"


def top_candidates(
    ids: np.ndarray,
    total: np.ndarray,
    terms: dict[str, np.ndarray],
    overlap: np.ndarray,
    uncached: np.ndarray,
    queued: np.ndarray,
) -> list[Candidate]:
    """The ``TOP_K`` best-scored workers, best first, each with its terms."""
    k = min(TOP_K, ids.shape[0])
    top = total.argpartition(k - 1)[:k] if ids.shape[0] > k else np.arange(k)
    top = top[total[top].argsort(kind="stable")]
    return [
        Candidate(
            worker_id=int(ids[j]),
            score=float(total[j]),
            terms={name: float(term[j]) for name, term in terms.items()},
            overlap_blocks=float(overlap[j]),
            uncached_tokens=float(uncached[j]),
            queued_tokens=float(queued[j]),
        )
        for j in top
    ]


class Router:
    """Agent-aware KV router core: pure logic, no I/O, no Dynamo imports."""

    def __init__(self, cfg: RouterConfig | None = None, block_size: int = 64) -> None:
        self.cfg = cfg or RouterConfig()
        self.block_size = block_size  # the workers' KV block size, in tokens
        c = self.cfg
        self.rng = np.random.default_rng(c.seed)
        self.table = PrefixTable(c.prefix_table_max_entries, max_pin_ttl_s=c.max_pin_ttl_s)
        self.bandit = WorkerBandit(c, self.rng)
        self.feedback = FeedbackTracker(c, self.bandit)
        self._last_sweep: float | None = None
        self.lineage: Lineage | None = None  # built on first use, in the block size then known
        self.decisions = 0
        # Placements by reason. A held request is not counted: its queue asks again every
        # few ms, and the processor's admission metrics count held requests once each.
        self.reasons: dict[str, int] = {
            r: 0 for r in ("sticky", "overlap", "load", "exploration", "pin")
        }

    # ------------------------------------------------------------------ decide
    def decide(self, request: RouteRequest, signals: WorkerSignals, now: float) -> Decision:
        """Score every worker in predicted ms, pick the best the tail guard and admission
        allow, remember the conversation, and leave a feedback record for ``report()``."""
        cfg = self.cfg
        ids = signals.worker_ids
        if ids.shape[0] == 0:
            raise NoWorkers("no workers to route to")
        bs = self.block_size
        prompt_blocks = request.prompt_tokens // bs

        # 1) The conversation and its home; 2) the history fallback for missing KV events,
        # and on a worker the request does not fit, only the cache it can keep there.
        conv = self._conversation(request, ids, now)
        kv_overlap = signals.overlap_blocks
        overlap = history_overlap(conv, kv_overlap, prompt_blocks, now)
        fallback = overlap is not kv_overlap
        needed = request_blocks(request.prompt_tokens, request.osl or cfg.default_osl, bs)
        overlap = cost.kept_overlap(
            overlap, signals.used_blocks, signals.shared_blocks, needed, signals.capacity_blocks
        )

        # 3) Score: the named terms of router/cost.py, then the learner's correction.
        uncached, queued = cost.split_prefill(
            request.prompt_tokens,
            overlap,
            signals.potential_prefill_tokens,
            bs,
            kv_overlap if overlap is not kv_overlap else None,
        )
        terms = cost.breakdown(
            cfg,
            bs,
            signals,
            uncached=uncached,
            queued=queued,
            overlap_blocks=overlap,
            claimed_blocks=self._claimed(ids, conv),
            request_blocks=needed,
            home=conv.home,
            reuse=cost.reuse_factor(conv.remaining, conv.pinned),
            speed=self.bandit.speed_factors(ids) if cfg.bandit_enabled else None,
        )
        x = make_features(
            terms["prefill_ms"],
            signals.decode_blocks,
            signals.capacity_blocks,
            signals.active_requests,
        )
        learned_mean = self._learn(terms, ids, x, request, conv, overlap, prompt_blocks)
        total = cost.score(terms)

        # 4) Pick, explain, record.
        ttft = terms["prefill_ms"] + terms["kv_full_ms"]  # the predicted TTFT
        i = pick(cfg, request, conv.entry is None, total, ttft, terms["kv_full_ms"], uncached)
        if i < 0:
            return Decision(request.request_id, -1, "held", [], [], float(ttft.min()))
        reason = explain(i, conv, terms, total, overlap, learned_mean)
        self.reasons[reason] += 1
        self.decisions += 1
        chosen = int(ids[i])
        home_id = conv.entry.home if conv.entry is not None else None  # before it moves
        after, key = self._remember(request, conv, chosen, prompt_blocks, now)
        xi = x[i].copy()
        predicted = float(terms["prefill_ms"][i])
        self.feedback.add(request.request_id, chosen, xi, float(queued[i]), predicted, now)
        return Decision(
            request_id=request.request_id,
            worker_id=chosen,
            reason=reason,
            candidates=top_candidates(ids, total, terms, overlap, uncached, queued),
            features=xi.tolist(),
            predicted_ttft_ms=predicted,
            home_worker_id=home_id,
            inferred_conversation=key,
            reuse_remaining=after.remaining if after is not None else 0,
            pinned=after is not None and after.pinned(now),
            history_fallback=fallback,
        )

    def _conversation(self, request: RouteRequest, ids: np.ndarray, now: float) -> Conversation:
        """The request's conversation: its prefix id, or without one the conversation its
        prompt extends (router/lineage.py); its table entry and home's index, if any."""
        prefix_id = request.prefix_id
        inferred = prefix_id is None and bool(request.block_hashes)
        if inferred:
            if self.lineage is None:
                self.lineage = Lineage(self.block_size)
            prefix_id = self.lineage.find(request.block_hashes, now)  # type: ignore[arg-type]
        entry = self.table.get(prefix_id, now) if prefix_id else None
        home = -1
        if entry is not None:
            hit = (ids == entry.home).nonzero()[0]
            if hit.size:  # the home may have left the fleet
                home = int(hit[0])
        return Conversation(
            prefix_id,
            inferred,
            entry,
            home,
            entry is not None and entry.pinned(now),
            entry.remaining if entry is not None else 0,
        )

    def _claimed(self, ids: np.ndarray, conv: Conversation) -> np.ndarray:
        """Pinned blocks per worker (often none), less the conversation's own on its home:
        a conversation does not evict itself."""
        reserved = aligned(ids, self.table.reserved_by_worker())
        entry = conv.entry
        if conv.home >= 0 and entry is not None and entry.reserved:
            reserved = reserved.copy()
            reserved[conv.home] = max(0.0, reserved[conv.home] - entry.reserved)
        return reserved

    def _learn(
        self,
        terms: dict[str, np.ndarray],
        ids: np.ndarray,
        x: np.ndarray,
        request: RouteRequest,
        conv: Conversation,
        overlap: np.ndarray,
        prompt_blocks: int,
    ) -> np.ndarray | None:
        """Set ``learned_ms`` from the learner's posterior sample; the posterior mean's
        correction when a sample was drawn (to tell exploration apart), else None."""
        cfg = self.cfg
        if not cfg.bandit_enabled:
            return None
        osl = request.osl or cfg.default_osl
        # Exploring moves a request off the best-scored worker, and what that can cost is the
        # cached prefix it would have reused. So sampling is scaled by the part of the prompt
        # that is cold everywhere: a conversation with a live home, or a prompt cached in full
        # somewhere, follows the posterior mean (its feedback still teaches the learner); a
        # prompt nobody has cached explores fully.
        if conv.home >= 0:
            cold = 0.0
        elif prompt_blocks:
            cold = 1.0 - min(1.0, float(overlap.max()) / prompt_blocks)
        else:
            cold = 1.0
        sampled, mean = self.bandit.sample(ids, x, request.latency_sensitivity, cold)
        # Standardized units -> ms: TTFT directly; ITL (ms/token) x expected tokens.
        unit = np.array([TTFT_SCALE_MS, ITL_WEIGHT * osl * ITL_SCALE_MS])
        terms["learned_ms"] = unit @ sampled
        return unit @ mean if sampled is not mean else None  # no sample: no exploration

    def _remember(
        self, request: RouteRequest, conv: Conversation, chosen: int, prompt_blocks: int, now: float
    ) -> tuple[PrefixEntry | None, str | None]:
        """Record the conversation on the chosen worker (budget, home, pin, claim); the
        entry after it, and the inferred conversation's key."""
        if conv.inferred:
            lin = self.lineage
            assert lin is not None and request.block_hashes
            # Expected back once more, after the gap learned over inferred conversations: the
            # conversation claims its home's blocks until then (the return model of hinted
            # traffic, with learned numbers in place of the client's).
            repeat = request.retry and conv.prefix_id is not None  # the turn already recorded
            if repeat:
                key = conv.prefix_id
            else:
                key, _ = lin.record(request.block_hashes, conv.prefix_id, now)
                self.table.remove(key)
            gap_ms = lin.gap_s * 1000.0 if lin.gap_s else None
            after = self.table.observe(
                key, chosen, now, 2, prompt_blocks, None, claim_s(gap_ms), repeat=repeat
            )
            return after, key
        if request.prefix_id:
            after = self.table.observe(
                request.prefix_id,
                chosen,
                now,
                request.total_requests,
                prompt_blocks,
                request.pin_ttl_s,
                claim_s(request.iat_ms),
                repeat=request.retry,
            )
            return after, None
        return None, None

    # ------------------------------------------------------------------ feedback
    def report(
        self,
        request_id: str,
        ttft_ms: float | None,
        itl_ms: float | None,
        uncached_tokens: int | None = None,
        output_tokens: int = 0,
        ok: bool = True,
    ) -> bool:
        """Feed measured latency back; False if the request id is unknown (late/dropped)."""
        return self.feedback.report(request_id, ttft_ms, itl_ms, uncached_tokens, output_tokens, ok)

    def first_token(self, request_id: str) -> None:
        """The chosen worker sent the request's first token."""
        self.feedback.first_token(request_id)

    def cancel(self, request_id: str) -> bool:
        """The client cancelled: release the decision without feedback."""
        return self.feedback.discard(request_id)

    def sweep(self, now: float) -> dict[str, int]:
        """Background maintenance (never call on the request path): expire prefixes and
        pins, time out feedback with the penalty, discount idle learner evidence."""
        removed = self.table.sweep(now)
        timed_out = self.feedback.sweep(now)
        if self._last_sweep is not None and self.cfg.bandit_enabled:
            elapsed = max(0.0, now - self._last_sweep)
            if elapsed > 0:
                self.bandit.decay(IDLE_FORGETTING_PER_S**elapsed)
        self._last_sweep = now
        return {"prefixes_removed": removed, "feedback_timeouts": timed_out}

    def remove_worker(self, worker_id: int) -> None:
        """Forget a worker that left the fleet (learner row, reservations). Its pending
        feedback records are not scanned: they are reported or expire normally, and the
        bandit ignores updates for workers it no longer tracks."""
        self.bandit.remove(worker_id)
        self.table.forget_worker(worker_id)

    # ------------------------------------------------------------------ state
    def stats(self) -> dict[str, Any]:
        """Counters and sizes for metrics."""
        return {
            "decisions": self.decisions,
            "reasons": dict(self.reasons),
            "prefixes": len(self.table),
            "claiming_prefixes": self.table.claims,
            "prefix_evictions": self.table.evictions,
            "inferred_conversations": len(self.lineage) if self.lineage is not None else 0,
            "prefix_expirations": self.table.expirations,
            "pending_feedback": len(self.feedback),
            "feedback_dropped": self.feedback.dropped,
            "feedback_timeouts": self.feedback.timeouts,
            "feedback_failures": self.feedback.failures,
            "feedback_unmeasured": self.feedback.unmeasured,
            "feedback_unknown": self.feedback.unknown_reports,
        }

    def state_dict(self) -> dict[str, Any]:
        return self.bandit.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bandit.load_state_dict(state)
