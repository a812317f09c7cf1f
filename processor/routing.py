"""How the processor reaches the router: in-process (default) or a shared router component.

Both variants ask the processor's own ``KvRouter`` (fed by the workers' KV events) for the
per-worker rows of the prompt, so only O(workers) numbers ever leave the processor, and
both drive the same ``router.service.RouterService`` calls: ``find_worker`` before
forwarding, ``first_token`` and ``finish`` after. The remote variant sends feedback without
waiting for it (bounded: past ``MAX_FEEDBACK_IN_FLIGHT`` messages it drops and counts).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import msgspec

from processor.engine_state import EngineState
from processor.health import NO_WORKER_RETRY_AFTER_S
from router.hints import AgentHints
from router.policy import Decision, RouteRequest
from router.service import Feedback, FindWorker, RouterService
from router.unavailable import Unavailable

logger = logging.getLogger(__name__)

MAX_FEEDBACK_IN_FLIGHT = 1024
# How Dynamo (1.6.1) starts the error of a call no instance could take ("Unavailable: TCP
# connection to ... failed", then "Unavailable: No workers available for endpoint ..."): it
# comes at once, while discovery still lists a killed instance until its lease ends.
UNREACHABLE = "Unavailable:"


class Routing(Protocol):
    """What the processor handler needs from a router."""

    async def decide(
        self, route: RouteRequest, token_ids: list[int], live: frozenset[int]
    ) -> Decision: ...

    def feedback(self, msg: Feedback) -> None: ...

    def remove_worker(self, worker_id: int) -> None: ...

    def maintain(self, now: float) -> dict[str, int]: ...


class LocalRouting:
    """``RouterService`` in this process: one ``get_potential_loads`` call and a decision."""

    def __init__(
        self,
        service: RouterService,
        kv_router: Any,
        engine: EngineState | None = None,
        block_size: int | None = None,
    ) -> None:
        self.service = service
        self._kv = kv_router
        self._engine = engine
        self._block_size = block_size

    async def decide(
        self, route: RouteRequest, token_ids: list[int], live: frozenset[int]
    ) -> Decision:
        rows = await self._kv.get_potential_loads(token_ids)
        msg = find_worker_message(route, rows, live, self._engine, self._block_size)
        return self.service.find_worker(msg, time.monotonic())

    def feedback(self, msg: Feedback) -> None:
        self.service.feedback(msg)

    def remove_worker(self, worker_id: int) -> None:
        self.service.remove_worker(worker_id)

    def maintain(self, now: float) -> dict[str, int]:
        swept = self.service.sweep(now)
        return {**swept, **_counts(self.service.router.stats())}


class RemoteRouting:
    """A standalone ``python -m router`` reached over Dynamo endpoints (shared learner)."""

    def __init__(
        self,
        find_client: Any,
        feedback_client: Any,
        kv_router: Any,
        engine: EngineState | None = None,
        block_size: int | None = None,
    ) -> None:
        self._find = find_client
        self._feedback = feedback_client
        self._kv = kv_router
        self._engine = engine
        self._block_size = block_size
        self._sending: set[asyncio.Task[None]] = set()
        self.feedback_dropped = 0

    async def decide(
        self, route: RouteRequest, token_ids: list[int], live: frozenset[int]
    ) -> Decision:
        rows = await self._kv.get_potential_loads(token_ids)
        msg = find_worker_message(route, rows, live, self._engine, self._block_size)
        msg = msgspec.to_builtins(msg)
        try:
            async for answer in await self._find.round_robin(msg, annotated=False):
                return msgspec.convert(answer, Decision)
        except Exception as exc:
            if self.has_router() and not str(exc).startswith(UNREACHABLE):
                raise
            # Gone (killed, restarting): "retry later", as without a worker, not a 500.
            raise Unavailable(
                "no_router", NO_WORKER_RETRY_AFTER_S, "no router component in discovery"
            ) from exc
        raise RuntimeError("router component returned no decision")

    def has_router(self) -> bool:
        """Whether a router component is in discovery (health: none, nothing is routable)."""
        return bool(self._find.instance_ids())

    def feedback(self, msg: Feedback) -> None:
        if len(self._sending) >= MAX_FEEDBACK_IN_FLIGHT:
            self.feedback_dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._send(msgspec.to_builtins(msg)))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, payload: dict[str, Any]) -> None:
        try:
            async for _ in await self._feedback.round_robin(payload, annotated=False):
                pass
        except Exception as exc:  # feedback is advisory; the router times it out
            self.feedback_dropped += 1
            logger.debug("feedback to the router failed: %r", exc)

    def remove_worker(self, worker_id: int) -> None:
        return None  # the router component sweeps its own state

    def maintain(self, now: float) -> dict[str, int]:
        return {**nothing_swept(), "feedback_dropped": self.feedback_dropped}


def nothing_swept() -> dict[str, int]:
    """What ``maintain`` reports where the router's state lives elsewhere: every count 0."""
    return {
        "feedback_timeouts": 0,
        "claiming_prefixes": 0,
        "prefixes": 0,
        "prefix_evictions": 0,
        "feedback_dropped": 0,
    }


def find_worker_message(
    route: RouteRequest,
    rows: list[dict[str, Any]],
    live: frozenset[int],
    engine: EngineState | None,
    block_size: int | None = None,
) -> FindWorker:
    """The ``find_worker`` message: KvRouter rows, the capacities the workers' cards state (if
    read) and the caller's KV block size (None: the router's own)."""
    return FindWorker(
        request=route,
        rows=rows,
        live=list(live),
        capacity=(engine.capacity or None) if engine is not None else None,
        block_size=block_size,
    )


def _counts(stats: dict[str, Any]) -> dict[str, int]:
    return {
        "claiming_prefixes": stats["claiming_prefixes"],
        "prefixes": stats["prefixes"],
        "prefix_evictions": stats["prefix_evictions"],  # since start
        "feedback_dropped": 0,  # the router is in this process: nothing to send
    }


def drop_departed(
    routing: Routing,
    known: frozenset[int],
    live: frozenset[int],
) -> frozenset[int]:
    """Drop the workers that left discovery since the last look from routing; returns
    ``live`` (the next call's ``known``)."""
    for gone in known - live:
        logger.warning("worker %x left discovery; dropped from routing", gone)
        routing.remove_worker(gone)
    return live


class Quarantine:
    """Workers that just failed a request, left out of routing for ``seconds`` unless that
    leaves none. Why: discovery drops a killed worker only when its lease runs out (about 10 s
    with file discovery), and until then every request sent there fails. Bounded: ``prune``
    keeps at most one entry per live worker; ``seconds`` 0 = off."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._until: dict[int, float] = {}  # worker -> monotonic end

    def add(self, worker_id: int) -> None:
        if self.seconds > 0:
            self._until[worker_id] = time.monotonic() + self.seconds

    def healthy(self, live: frozenset[int]) -> frozenset[int]:
        """``live`` without the quarantined workers, or all of ``live`` if none would be left."""
        if self._until and live:
            now = time.monotonic()
            ok = frozenset(w for w in live if self._until.get(w, 0.0) <= now)
            if ok:
                return ok
        return live

    def prune(self, live: frozenset[int], now: float) -> None:
        """Forget expired entries and workers that left discovery (the background sweep)."""
        for w, until in list(self._until.items()):
            if until <= now or w not in live:
                del self._until[w]

    def workers(self) -> frozenset[int]:
        """The workers in quarantine (expired ones too until the next ``prune``)."""
        return frozenset(self._until)


def route_request(
    request_id: str,
    hints: AgentHints,
    prompt_tokens: int,
    max_tokens: object = None,
    max_len: int | None = None,
) -> RouteRequest:
    """The router's view of one request: its hints, prompt length and expected answer.
    ``max_len``: the longest sequence a worker holds; no answer outgrows what it leaves after
    the prompt, so an ``osl`` hint beyond it (up to 2^31-1 is valid) cannot make its worker
    look full for as long as it runs."""
    # Neither says: None, and the router uses its AKR_ROUTER_DEFAULT_OSL.
    osl = hints.osl or (max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None)
    if osl is not None and max_len is not None:
        osl = max(1, min(osl, max_len - prompt_tokens))
    return RouteRequest(
        request_id=request_id,
        prefix_id=hints.prefix_id,
        prompt_tokens=prompt_tokens,
        total_requests=hints.total_requests or 1,
        osl=osl,
        iat_ms=hints.iat_ms,
        latency_sensitivity=hints.latency_sensitivity or 0.0,
        priority=hints.priority or 0,
        pin_ttl_s=hints.pin_ttl_s,
    )


def chain_hashes(block_hashes: list[int]) -> list[int]:
    """Per full block, a hash of the block AND everything before it (what the engine's prefix
    cache matches on): Dynamo's per-block hashes cover one block's tokens only, so two
    prompts with an equal block after different prefixes would share it. Python's hash of an
    int tuple is the same in every process, so a standalone router can use these too."""
    out: list[int] = []
    prev = 0
    for h in block_hashes:
        prev = hash((prev, h))
        out.append(prev)
    return out


def block_hashes(token_ids: list[int], block_size: int) -> list[int]:
    """Dynamo's hash of each full block of the prompt (the KV events' key)."""
    from dynamo.llm import compute_block_hash_for_seq

    return list(compute_block_hash_for_seq(token_ids, block_size)) if token_ids else []


def finish_feedback(
    request_id: str,
    prompt_tokens: int,
    cached_tokens: int | None,
    ttft_ms: float | None,
    itl_ms: float | None,
    output_tokens: int,
    outcome: str,
) -> Feedback:
    """The end of a request as the learner sees it (the processor and the replay share it)."""
    uncached = None if cached_tokens is None else max(0, prompt_tokens - cached_tokens)
    return Feedback(
        event="finish",
        request_id=request_id,
        ttft_ms=ttft_ms,
        itl_ms=itl_ms,
        uncached_tokens=uncached,
        output_tokens=output_tokens,
        ok=outcome == "ok",
        cancelled=outcome == "cancelled",
    )
