"""How the processor reaches the router: in-process (default) or a shared router component.

Both variants ask the processor's own ``KvRouter`` (fed by the workers' KV events) for the
per-worker rows of the prompt, so only O(workers) numbers ever leave the processor, and
both drive the same ``router.service.RouterService`` calls: ``find_worker`` before
forwarding, ``first_token`` and ``finish`` after. The remote variant sends feedback without
waiting for it (bounded: past ``MAX_FEEDBACK_IN_FLIGHT`` messages it drops and counts).

Every call to a shared router ends within ``ROUTER_TIMEOUT_S``: a router still in discovery
but not answering (frozen, a stuck event loop, a network black hole) would otherwise hold
each request that needs a decision. A decision past it fails as 503 ``router_timeout``, as
"retry later" as any other unavailability. The router may still make it, late: the first
answer after the silence sends a cancel for each decision given up (else it would hold load
on its worker and, never reported, count against that worker in the learner at the router's
feedback timeout). Sent once the router answers again, not at once: a frozen router reads
the cancel and the request it cancels in any order when it resumes.
``ROUTER_SILENT_AFTER`` calls in a row without an answer make the router "not answering":
``/health`` says ``router_timeout``, and requests fail at once instead of each waiting the
deadline, until a probe the background sweep sends gets an answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
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
# Longest a call to the shared router may take, request sent and answer back (decisions and
# feedback alike). Why this value: a decision takes milliseconds (on loopback with 64-256
# clients, p50 4-6 ms; 256 saturating two shared cores, stack included: p99 0.37 s, worst
# 0.43 s),
# and Dynamo's request plane (1.6.1) ends a call itself only when the router does not
# acknowledge the request within 5 s (a frozen router: the client then gets a 500, and
# Dynamo skips the router for seconds after), never when it acknowledged and then does not
# answer (a stuck event loop: the request waited for good). Below 5 s every such call is ours
# to end, the same way; 4x the worst decision seen keeps a slow router from being cut off.
ROUTER_TIMEOUT_S = 2.0
# Calls in a row left unanswered after which the router counts as not answering: one can be
# one late message; the sweep's probe, sent within a second, confirms it (or clears it).
ROUTER_SILENT_AFTER = 2
# The probe: a "first token" of a request the router never placed, a no-op for the router
# that still needs its event loop to answer. No real request id (a UUID) takes this one.
PROBE = {"event": "first_token", "request_id": "akr-router-probe"}
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
        self._sending: set[asyncio.Task[None]] = set()  # feedback and probe calls
        self.feedback_dropped = 0
        self.unanswered = 0  # calls in a row the router left unanswered (_call)
        self._probing = False
        # Decisions given up (timed out), cancelled once the router answers again; at most
        # MAX_FEEDBACK_IN_FLIGHT, more are counted as dropped feedback.
        self._given_up: deque[str] = deque()

    async def decide(
        self, route: RouteRequest, token_ids: list[int], live: frozenset[int]
    ) -> Decision:
        if self.unanswered >= ROUTER_SILENT_AFTER:  # known silent: no use waiting again
            raise _unavailable(self.unavailable_reason() or "router_timeout")
        rows = await self._kv.get_potential_loads(token_ids)
        msg = find_worker_message(route, rows, live, self._engine, self._block_size)
        try:
            answer = await self._call(self._find, msgspec.to_builtins(msg))
        except TimeoutError as exc:
            if len(self._given_up) < MAX_FEEDBACK_IN_FLIGHT:
                self._given_up.append(route.request_id)
            else:
                self.feedback_dropped += 1
            raise _unavailable("router_timeout") from exc
        except Exception as exc:
            if self.has_router() and not str(exc).startswith(UNREACHABLE):
                raise
            # Gone (killed, restarting): "retry later", as without a worker, not a 500.
            raise _unavailable("no_router") from exc
        if answer is None:
            raise RuntimeError("router component returned no decision")
        return msgspec.convert(answer, Decision)

    async def _call(self, client: Any, payload: dict[str, Any]) -> Any:
        """The first answer of one call to the router (None: it answered nothing), or
        ``TimeoutError`` past ``ROUTER_TIMEOUT_S``. A call timed out is cancelled: its request
        future and answer stream are dropped, so a late answer finds no reader and ends at
        the router. Counts the calls in a row the router left unanswered; an answer cancels
        the decisions given up meanwhile."""
        first = None
        try:
            async with asyncio.timeout(ROUTER_TIMEOUT_S):
                async for answer in await client.round_robin(payload, annotated=False):
                    first = answer
                    break
        except TimeoutError:
            self.unanswered += 1
            raise
        self.unanswered = 0
        while self._given_up:
            rid = self._given_up.popleft()
            self.feedback(Feedback(event="finish", request_id=rid, cancelled=True))
        return first

    def has_router(self) -> bool:
        """Whether a router component is in discovery (health: none, nothing is routable)."""
        return bool(self._find.instance_ids())

    def unavailable_reason(self) -> str | None:
        """Why no request can be placed now, or None: ``no_router`` (none in discovery) or
        ``router_timeout`` (it leaves calls unanswered); ``/health`` answers it as status."""
        if not self.has_router():
            return "no_router"
        if self.unanswered >= ROUTER_SILENT_AFTER:
            return "router_timeout"
        return None

    def feedback(self, msg: Feedback) -> None:
        if len(self._sending) >= MAX_FEEDBACK_IN_FLIGHT:
            self.feedback_dropped += 1
            return
        self._spawn(self._send(msgspec.to_builtins(msg)))

    def _spawn(self, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, payload: dict[str, Any]) -> None:
        try:
            await self._call(self._feedback, payload)
        except Exception as exc:  # feedback is advisory; the router times it out
            self.feedback_dropped += 1
            logger.debug("feedback to the router failed: %r", exc)

    async def _probe(self) -> None:
        """One probe of a router that left a call unanswered: an answer clears it."""
        try:
            await self._call(self._feedback, PROBE)
        except Exception as exc:  # unanswered (counted by _call) or unreachable: next sweep
            logger.debug("router probe failed: %r", exc)
        finally:
            self._probing = False

    def remove_worker(self, worker_id: int) -> None:
        return None  # the router component sweeps its own state

    def maintain(self, now: float) -> dict[str, int]:
        if self.unanswered and not self._probing:  # one probe at a time, one per sweep
            self._probing = True
            self._spawn(self._probe())
        return {**nothing_swept(), "feedback_dropped": self.feedback_dropped}


_WHY = {
    "no_router": "no router component in discovery",
    "router_timeout": f"the router leaves calls unanswered (none within {ROUTER_TIMEOUT_S:g} s)",
}


def _unavailable(reason: str) -> Unavailable:
    """The "retry later" of a request the shared router cannot place (``_WHY``)."""
    return Unavailable(reason, NO_WORKER_RETRY_AFTER_S, _WHY[reason])


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
