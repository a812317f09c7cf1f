"""Routing in the gateway (``AKR_GATEWAY_ROUTING=gateway``): decide before the stock frontend.

Why this mode exists: in the default deployment the processor is a Dynamo component between
the stock frontend and the workers, so every request crosses one more request-plane hop with
Python at both ends, and every token is relayed through it: on this 2-core machine our path
costs 4-5 ms more than the stock frontend's per request at idle, up to ~10 ms with 10k-token
prompts, and a bare Python-to-Python Dynamo round trip alone is ~3.5-4 ms
(``benchmarks.idle_path``). Here the gateway makes the same decision out of band and the stock
frontend sends the request straight to the chosen worker:

1. ask the stock frontend for the prompt's tokens: the same body with Dynamo's
   ``query_instance_id:`` annotation makes it apply the chat template, tokenize and answer
   with ``nvext.token_ids`` without generating (the first step of the flow Dynamo's Gateway
   API Inference Extension uses);
2. decide with the processor's own pieces (``processor.routing``: ``KvRouter`` rows fed by the
   workers' KV events, then ``RouterService.find_worker``);
3. forward the request with ``nvext.token_data`` (the frontend does not tokenize again) and
   ``nvext.backend_instance_id`` (the frontend sends it to that worker); both checked on
   Dynamo 1.6.1.

Feedback comes from the gateway's view of the answer: time to the first SSE chunk (TTFT),
chunks per second after it (one token per chunk from Dynamo's frontend), end or disconnect.
Like the processor, it reads the workers' model-card capacity and forward-pass metrics
(``processor.engine_state``), and a worker the frontend could not get an answer from is
quarantined and the request decided again (``frontend.gateway``), as is a streamed request
whose first token does not come within ``AKR_GATEWAY_FIRST_TOKEN_TIMEOUT_S``. Compared with
the processor, this mode reports the decision's predicted uncached tokens instead of the engine's
cached-token count, and a whole (non-streamed) answer has no first-token deadline. The workers
register under the public model name (no processor owns it), which the frontend's ``--router-mode
kv`` serves.

Measured (benchmarks/results/idle_path.md, routing_experiment_gateway_routing.md): the tokens
query costs about what the processor hop did (a second HTTP round trip through the frontend,
3 ms at idle on short prompts), so TTFT is the same as the processor path within the spread;
the machine's CPU load is a little lower (no per-token relay in a second process).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from frontend.session_blocks import SessionBlocks
from processor.engine_state import EngineState
from processor.routing import (
    LocalRouting,
    Quarantine,
    block_hashes,
    chain_hashes,
    drop_departed,
    find_worker_message,
    route_request,
)
from router.config import RouterConfig
from router.hints import AgentHints
from router.policy import Decision, RouteRequest
from router.service import Feedback, RouterService

log = logging.getLogger(__name__)

QUERY_ANNOTATION = "query_instance_id:"  # Dynamo 1.6.1: tokens + choice, no generation
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class TokensUnavailable(Exception):
    """The frontend did not tokenize the request; ``status``/``body`` are its answer."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"tokens query answered {status}")
        self.status = status
        self.body = body


class NoWorker(Exception):
    """Every live worker failed this request already (the gateway answers 503)."""


@dataclass(slots=True)
class Routed:
    """One routed request, from decision to its last chunk (one per request in flight)."""

    decision: Decision
    prompt_tokens: int
    uncached_tokens: int
    query_ms: float
    decision_ms: float
    tokens_source: str = "frontend"  # "estimate": sticky fast path, no tokens asked
    t_sent: float = 0.0
    t_first: float | None = None
    t_last: float = 0.0
    chunks: int = 0

    @property
    def ttft_ms(self) -> float | None:
        return None if self.t_first is None else (self.t_first - self.t_sent) * 1000.0

    @property
    def itl_ms(self) -> float | None:
        if self.t_first is None or self.chunks < 3:
            return None
        return (self.t_last - self.t_first) * 1000.0 / (self.chunks - 1)


def tokens_from_query(payload: bytes) -> list[int] | None:
    """``nvext.token_ids`` of the frontend's answer to a ``query_instance_id:`` request."""
    for line in payload.split(b"\n"):
        if not line.startswith(b"data: {"):
            continue
        try:
            event = _decoder.decode(line[6:])
        except msgspec.DecodeError:
            continue
        ids = (event.get("nvext") or {}).get("token_ids") if isinstance(event, dict) else None
        if isinstance(ids, list):
            return ids
    return None


def query_body(body: dict[str, Any]) -> dict[str, Any]:
    """The body that asks the frontend for the prompt's tokens instead of an answer."""
    nvext = dict(body.get("nvext") or {})
    nvext["annotations"] = [*(nvext.get("annotations") or []), QUERY_ANNOTATION]
    return {**body, "stream": True, "nvext": nvext}


def pinned_body(
    body: dict[str, Any], token_ids: list[int] | None, worker_id: int
) -> dict[str, Any]:
    """The body that makes the frontend skip tokenizing and send it to ``worker_id``.

    A client's own ``query_instance_id`` annotation is dropped: the answer would be a query
    answer, and its "first token" would teach the learner a worker is impossibly fast."""
    nvext = dict(body.get("nvext") or {})
    annotations = nvext.get("annotations")
    if annotations:
        nvext["annotations"] = [
            a for a in annotations if not a.startswith(QUERY_ANNOTATION.rstrip(":"))
        ]
    if token_ids is not None:
        nvext["token_data"] = token_ids
    else:
        nvext.pop("token_data", None)
    nvext["backend_instance_id"] = worker_id
    return {**body, "nvext": nvext}


def prompt_chars(body: Mapping[str, Any]) -> int:
    """Characters of a body's prompt text (messages' string contents, or the prompt)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return sum(
            len(m["content"])
            for m in messages
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
    prompt = body.get("prompt")
    return len(prompt) if isinstance(prompt, str) else 0


class GatewayRouting:
    """The router inside the gateway: one Dynamo runtime, one ``KvRouter``, one service."""

    def __init__(
        self,
        worker_endpoint: str,
        block_size: int,
        sweep_interval_s: float = 1.0,
        service: RouterService | None = None,
        sticky_fast_path: bool = False,
        sticky_max_sessions: int = 4096,
        engine_poll_s: float = 0.05,
        quarantine_s: float = 10.0,
    ) -> None:
        self.worker_endpoint = worker_endpoint
        self.block_size = block_size
        self.sticky_fast_path = sticky_fast_path
        self.tokens_per_char = 0.0  # learned from the frontend's answers (EWMA); 0 = unknown
        self.sweep_interval_s = sweep_interval_s
        self.engine_poll_s = engine_poll_s
        # What the workers' engines report (KV capacity, requests held back), as the processor
        # reads it; None when engine_poll_s is 0 or before start().
        self.engine: EngineState | None = None
        self.service = service or RouterService(RouterConfig())
        self._send_hashes = self.service.config.kv_full_ms > 0
        # Fast path + KV-full term: block hashes of each conversation's last prompt.
        self.sessions: SessionBlocks | None = (
            SessionBlocks(sticky_max_sessions) if sticky_fast_path and self._send_hashes else None
        )
        self._runtime: Any = None
        self._client: Any = None
        self.routing: LocalRouting | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._known: frozenset[int] = frozenset()
        # Workers that just failed a request (the frontend answered 5xx for them).
        self.quarantine = Quarantine(quarantine_s)
        # Called with each worker that left discovery (the gateway ends its metric labels).
        self.on_departed: Callable[[int], None] | None = None

    async def start(self) -> None:
        """Join Dynamo (its ``DYN_*`` settings) and wait for a worker."""
        from dynamo.llm import KvRouter, KvRouterConfig
        from dynamo.runtime import DistributedRuntime

        self._runtime = DistributedRuntime(
            asyncio.get_running_loop(),
            os.environ.get("DYN_DISCOVERY_BACKEND", "etcd"),
            os.environ.get("DYN_REQUEST_PLANE", "tcp"),
        )
        endpoint = self._runtime.endpoint(self.worker_endpoint)
        self._client = await endpoint.client()
        await self._client.wait_for_instances()
        kv = KvRouter(endpoint, self.block_size, KvRouterConfig())
        if self.engine_poll_s > 0:
            from dynamo.llm import FpmEventSubscriber

            self.engine = EngineState(
                FpmEventSubscriber(endpoint), self.block_size, self.engine_poll_s
            )
            self.engine.start()
        self.routing = LocalRouting(self.service, kv, self.engine)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None
        if self._runtime is not None:
            self._runtime.shutdown()
            self._runtime = None

    def routable(self, excluded: frozenset[int] = frozenset()) -> frozenset[int]:
        """Live workers minus ``excluded`` (failed this request) and, unless that leaves none,
        minus the quarantined ones (failed a request lately)."""
        return self.quarantine.healthy(frozenset(self._client.instance_ids()) - excluded)

    def worker_failed(self, worker_id: int) -> None:
        """The frontend could not get an answer from ``worker_id``: keep it out for a while."""
        self.quarantine.add(worker_id)

    async def decide(
        self,
        body: Mapping[str, Any],
        hints: AgentHints,
        token_ids: list[int],
        query_ms: float,
        excluded: frozenset[int] = frozenset(),
    ) -> Routed:
        """Our decision over the routable workers for a prompt already tokenized."""
        assert self.routing is not None, "start() first"
        live = self.routable(excluded)
        if not live:
            live = frozenset(await self._client.wait_for_instances()) - excluded
        if not live:
            raise NoWorker("no live worker left to route to")
        route = _route_of(body, hints, len(token_ids))
        if self._send_hashes:
            route.block_hashes = chain_hashes(block_hashes(token_ids, self.block_size))
            if self.sessions is not None and hints.prefix_id is not None:
                self.sessions.remember(hints.prefix_id, route.block_hashes)
        t0 = time.perf_counter()
        decision = await self.routing.decide(route, token_ids, live)
        decision_ms = (time.perf_counter() - t0) * 1000.0
        return Routed(
            decision, len(token_ids), _uncached(decision, len(token_ids)), query_ms, decision_ms
        )

    def learn_tokens_per_char(self, body: Mapping[str, Any], tokens: int) -> None:
        chars = prompt_chars(body)
        # Short prompts are mostly chat-template tokens: they would skew the ratio.
        if chars >= 256 and tokens > 0:
            ratio = tokens / chars
            self.tokens_per_char = (
                ratio if self.tokens_per_char == 0.0 else 0.9 * self.tokens_per_char + 0.1 * ratio
            )

    def decide_sticky(
        self, body: Mapping[str, Any], hints: AgentHints, excluded: frozenset[int] = frozenset()
    ) -> Routed | None:
        """A later turn of a conversation the router already placed, without its tokens.

        EXPERIMENT (AKR_GATEWAY_STICKY_FAST_PATH): skips the tokens query and the KvRouter
        call. The prompt's length is estimated from its characters (the ratio learned from
        the frontend's answers); no worker is credited with KV overlap, so the router's
        history fallback credits the conversation's home with its last prompt's blocks, and
        the cost model (load, pins, budget, learner) decides as usual. Returns None when the
        conversation is unknown or the ratio not yet learned: the caller takes the full path.
        """
        if not self.sticky_fast_path or hints.prefix_id is None or self.tokens_per_char <= 0:
            return None
        now = time.monotonic()
        entry = self.service.router.table.get(hints.prefix_id, now)
        if entry is None or now - entry.last_seen > self.service.config.history_window_s:
            return None
        live = self.routable(excluded)
        if entry.home not in live:
            return None
        t0 = time.perf_counter()
        tokens = max(1, int(prompt_chars(body) * self.tokens_per_char))
        route = _route_of(body, hints, tokens)
        if self.sessions is not None:
            # Without them the KV-full term could not count this request (session_blocks.py).
            route.block_hashes = self.sessions.extend(hints.prefix_id, tokens // self.block_size)
            if route.block_hashes is None:
                return None
        blocks = -(-tokens // self.block_size)
        rows = [
            {
                "worker_id": w,
                "dp_rank": 0,
                "potential_prefill_tokens": tokens,
                "potential_decode_blocks": blocks,
                "active_requests": 0,
            }
            for w in live
        ]
        decision = self.service.find_worker(
            find_worker_message(route, rows, live, self.engine), now
        )
        return Routed(
            decision,
            tokens,
            _uncached(decision, tokens),
            0.0,
            (time.perf_counter() - t0) * 1000.0,
            tokens_source="estimate",
        )

    def observe(self, routed: Routed, chunk: bytes) -> None:
        """One relayed chunk of the answer: first-token feedback and the chunk count."""
        now = time.perf_counter()
        if routed.t_first is None:
            routed.t_first = now
            self.routing.feedback(
                Feedback(event="first_token", request_id=routed.decision.request_id)
            )
        routed.t_last = now
        routed.chunks += chunk.count(b"data: ")

    def finish(self, routed: Routed, status: int) -> None:
        """The answer ended (``status`` 499: the client left): close the feedback loop."""
        assert self.routing is not None
        # A whole (non-streamed) answer has no first token to time: reported with
        # ttft_ms=None, it frees the load and teaches the learner nothing (router.feedback).
        cancelled = status == 499
        # The [DONE] event is not a token.
        tokens = max(0, routed.chunks - 1)
        self.routing.feedback(
            Feedback(
                event="finish",
                request_id=routed.decision.request_id,
                ttft_ms=routed.ttft_ms,
                itl_ms=routed.itl_ms,
                uncached_tokens=routed.uncached_tokens,
                output_tokens=tokens,
                ok=status == 200,
                cancelled=cancelled,
            )
        )

    async def _sweep_forever(self) -> None:
        """Expiry, feedback timeouts and workers leaving discovery, off the request path."""
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                live = frozenset(self._client.instance_ids())
                self._known = drop_departed(self.routing, self._known, live, self.on_departed)
                now = time.monotonic()
                self.quarantine.prune(live, now)
                self.routing.maintain(now)
            except Exception:  # keep sweeping; one bad pass must not stop expiry for good
                log.exception("routing sweep failed")


def _route_of(body: Mapping[str, Any], hints: AgentHints, prompt_tokens: int) -> RouteRequest:
    """The router's request for a body of ``prompt_tokens`` tokens, with a fresh id."""
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    return route_request(uuid.uuid4().hex, hints, prompt_tokens, max_tokens)


def _uncached(decision: Decision, default: int) -> int:
    """The uncached tokens the decision predicted on the worker it chose."""
    return int(
        next(
            (c.uncached_tokens for c in decision.candidates if c.worker_id == decision.worker_id),
            default,
        )
    )


def trace_fields(routed: Routed) -> dict[str, Any]:
    """What the gateway's trace record adds for a request it routed."""
    d = routed.decision
    return {
        "worker_id": d.worker_id,
        "reason": d.reason,
        "prompt_tokens": routed.prompt_tokens,
        "uncached_tokens": routed.uncached_tokens,
        "query_ms": round(routed.query_ms, 3),
        "tokens_source": routed.tokens_source,
        "decision_ms": round(routed.decision_ms, 3),
        "ttft_ms": None if routed.ttft_ms is None else round(routed.ttft_ms, 3),
        "chunks": routed.chunks,
        "candidates": [msgspec.structs.asdict(c) for c in d.candidates],
    }
