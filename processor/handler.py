"""Request handler of the processor: hints in, routing decision, forwarding, measurement.

Per request: read the hints (``router.hints.hints_from_request``: our gateway's annotations,
then the stock carriers), ask the router for a worker over the live ones, forward the token
request with ``client.direct`` and the handler's ``context`` (a client disconnect stops the
worker), stream every output back as it comes, measure TTFT / inter-token latency / end to
end / cached tokens, and only then hand feedback to the router and a record to the trace
writer (both O(1), neither awaits I/O on the stream).

Faults: a worker that fails (or stays silent past ``first_token_timeout_s``) before the first
token is excluded and the request is retried on the next best worker, at most
``max_retries`` times (counted); after tokens were sent the answer is continued on another
worker (processor/migration.py, at most ``migration_limit`` times, counted), and only past
that does the client get a clean error (a stream that breaks after the output with the finish
reason is a whole answer: neither); a worker silent mid-stream for
``stream_stall_timeout_s`` (frozen, or cut off without a reset) has failed too. A worker's
refusal (an error in its stream, e.g. a prompt beyond its admission limits) fails the
request (outcome "rejected", 400 when the prompt exceeds a limit) without a retry, a
quarantine or a TTFT for the learner. With no
routable worker a request fails fast as unavailable (processor/health.py). A worker that
leaves discovery is dropped from routing by the next decision (decisions only consider
``client.instance_ids()``) and from the router's state by the background sweep. As discovery
notices a killed worker only after its lease runs out (about 10 s with file discovery), a
worker that fails a request is also quarantined for ``worker_quarantine_s``: later decisions
leave it out unless no other worker is live.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from processor.admission import Admission
from processor.config import ProcessorConfig
from processor.engine_state import (
    ENGINE_POLL_S,
    EngineState,
    agreed_block_size,
    prefill_chunk_tokens,
    prompt_limit_tokens,
    wait_for_cards,
)
from processor.health import (
    NO_WORKER_RETRY_AFTER_S,
    WorkerHealth,
    as_http_error,
    serve_metrics_and_health,
    wait_for_routable,
)
from processor.metrics import ProcessorMetrics
from processor.migration import Continuation
from processor.relay import Relay
from processor.routing import (
    LocalRouting,
    Quarantine,
    RemoteRouting,
    Routing,
    block_hashes,
    chain_hashes,
    drop_departed,
    finish_feedback,
    route_request,
)
from processor.traces import SCHEMA_VERSION, TraceRecord
from router.envconfig import listening
from router.hints import annotated_request_id, hints_from_request
from router.jsonl_writer import JsonlWriter
from router.loop_lag import watch_loop_lag
from router.policy import Decision, RouteRequest
from router.service import STATE_SAVE_INTERVAL_S, Feedback, RouterService
from router.unavailable import Unavailable

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0  # period of the background sweep (expiry, feedback timeouts, workers)


class WorkerFailed(RuntimeError):
    """The chosen worker failed; ``before_first_token`` tells whether a retry is safe."""

    def __init__(self, worker_id: int, before_first_token: bool, cause: BaseException) -> None:
        super().__init__(f"worker {worker_id:x} failed: {cause!r}")
        self.worker_id = worker_id
        self.before_first_token = before_first_token


class WorkerRejected(RuntimeError):
    """The worker refused the request (an error in its stream, e.g. a prompt beyond its
    admission limits): the request's failure, not the worker's, so no retry, no quarantine,
    and never a success for the learner."""

    def __init__(self, worker_id: int, message: str) -> None:
        super().__init__(message)
        self.worker_id = worker_id

    def to_client(self) -> Exception:
        """A refusal of the prompt itself is the client's 400 (the stock frontend forwards a
        4xx message as is); anything else stays a server error."""
        from dynamo.llm.exceptions import HttpError

        text = str(self)
        return HttpError(400, text) if "exceeds" in text.lower() else RuntimeError(text)


class _Measure:
    """Timings and counts of one request (slots: one per request in flight): the client's view
    across attempts (``first``, ``tokens``), and the current attempt's own (``attempt_*``),
    which is what the chosen worker did and what its feedback to the router reports."""

    __slots__ = (
        "attempt_first",
        "attempt_prompt",
        "attempt_start",
        "attempt_tokens",
        "cached",
        "finish_reason",
        "first",
        "last",
        "out_ids",
        "start",
        "tokens",
    )

    def __init__(self) -> None:
        self.start = self.attempt_start = time.perf_counter()
        self.first: float | None = None
        self.attempt_first: float | None = None
        self.last = self.start
        self.tokens = self.attempt_tokens = 0
        self.cached: int | None = None
        self.finish_reason: str | None = None
        self.out_ids: list[int] | None = None
        self.attempt_prompt = 0

    def new_attempt(self, prompt_tokens: int) -> None:
        """A new attempt with a prompt of its own (a continuation's is longer)."""
        self.attempt_start = time.perf_counter()
        self.attempt_prompt = prompt_tokens
        self.attempt_first = None
        self.attempt_tokens = 0
        self.cached = None

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first is None else (self.first - self.start) * 1000.0

    @property
    def itl_ms(self) -> float | None:
        if self.first is None or self.tokens < 2:
            return None
        return (self.last - self.first) * 1000.0 / (self.tokens - 1)

    @property
    def attempt_ttft_ms(self) -> float | None:
        if self.attempt_first is None:
            return None
        return (self.attempt_first - self.attempt_start) * 1000.0

    @property
    def attempt_itl_ms(self) -> float | None:
        if self.attempt_first is None or self.attempt_tokens < 2:
            return None
        return (self.last - self.attempt_first) * 1000.0 / (self.attempt_tokens - 1)


class ProcessorHandler:
    """Owns the routing (in-process service or remote router), traces and metrics."""

    def __init__(
        self,
        runtime: Any,
        config: ProcessorConfig,
        service: RouterService | None = None,
        metrics: ProcessorMetrics | None = None,
    ) -> None:
        self._runtime = runtime
        self._config = config
        # In-process router (default); unused when config.router_endpoint names a component.
        self.service = service or RouterService(block_size=None)
        self.block_size = config.block_size  # the workers' one, read from their cards in start()
        self.metrics = metrics or ProcessorMetrics()
        self._client: Any = None
        self.routing: Routing | None = None
        self._writer: JsonlWriter | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._lag_watch: asyncio.Task[None] | None = None
        self._known_workers: frozenset[int] = frozenset()
        self.engine: EngineState | None = None  # the workers' own reports
        # The longest prompt a worker can take (their cards): registered as our context_length
        # at start-up, then kept current by the sweep (EngineState) for /health and routing.
        self.prompt_limit: int | None = None
        self._quarantine = Quarantine(self._config.worker_quarantine_s)
        self.health = WorkerHealth(
            config.expected_workers, config.expected_workers_window_s, config.model_name
        )
        self._http: Any = None
        self.admission = Admission(config.admission_deadline_s, self.metrics)

    async def start(self) -> None:
        """Connect to the workers, agree on their KV block size, start the background tasks.

        Raises ``BlockSizeMismatch`` when the workers' cards disagree on the block size (with
        each other, an explicit ``AKR_PROCESSOR_BLOCK_SIZE``, or the router's)."""
        from dynamo.llm import FpmEventSubscriber, KvRouter, KvRouterConfig

        cfg = self._config
        # Health and metrics from the start: /live answers while the workers load (minutes
        # on GPUs), driven by the loop-lag watch's ticks; /health says "starting" until then.
        self._lag_watch = asyncio.create_task(
            watch_loop_lag(self._loop_tick, asyncio.get_running_loop().time)
        )
        if cfg.metrics_port is not None:
            names = "AKR_PROCESSOR_METRICS_HOST, AKR_PROCESSOR_METRICS_PORT"
            with listening("the processor's metrics", cfg.metrics_host, cfg.metrics_port, names):
                self._http = serve_metrics_and_health(
                    self.metrics.registry, self.health, cfg.metrics_port, cfg.metrics_host
                )
        endpoint = self._runtime.endpoint(cfg.worker_endpoint)
        self._client = await endpoint.client()
        await self._client.wait_for_instances()
        subscriber = FpmEventSubscriber(endpoint)
        subscriber.start_tracking()
        cards = await wait_for_cards(subscriber)
        self.block_size = agreed_block_size(
            cards, cfg.block_size, "block_size" in cfg.model_fields_set
        )
        self.service.use_block_size(self.block_size)
        logger.info("workers' KV block size: %d tokens", self.block_size)
        self.prompt_limit = prompt_limit_tokens(cards, self.block_size)  # EngineState logs it
        router_cfg = self.service.config
        chunk = prefill_chunk_tokens(cards)
        if chunk is not None and "prefill_chunk_tokens" not in router_cfg.model_fields_set:
            router_cfg.prefill_chunk_tokens = chunk  # the engines' own, unless set explicitly
        logger.info(
            "prefill pass of the router's model: %d tokens", router_cfg.prefill_chunk_tokens
        )
        kv_router = KvRouter(endpoint, self.block_size, KvRouterConfig())
        self.engine = EngineState(subscriber, self.block_size, ENGINE_POLL_S)
        self.engine.start()
        if self._config.router_endpoint:
            find = await self._runtime.endpoint(
                f"{self._config.router_endpoint}.find_worker"
            ).client()
            feedback = await self._runtime.endpoint(
                f"{self._config.router_endpoint}.feedback"
            ).client()
            self.metrics.router_available.set(0)  # until one is in discovery (the sweep)
            await find.wait_for_instances()
            self.routing = RemoteRouting(find, feedback, kv_router, self.engine, self.block_size)
            logger.info("routing through the router component %s", self._config.router_endpoint)
        else:
            self.routing = LocalRouting(self.service, kv_router, self.engine, self.block_size)
        if self._config.trace_path is not None:
            self._writer = JsonlWriter(self._config.trace_path, queue_size=cfg.trace_queue_size)
            self._writer.start()
        self._sweep_once()  # gauges (workers routable, ...) valid before the first periodic sweep
        self._sweeper = asyncio.create_task(self._sweep_forever())

    def _loop_tick(self, lag_s: float) -> None:
        """The loop-lag watch's timer fired ``lag_s`` late: a lag sample, and a liveness beat."""
        self.metrics.loop_lag.observe(lag_s)
        self.health.beat(time.monotonic())

    async def stop(self) -> None:
        for task in (self._sweeper, self._lag_watch):
            if task is not None:
                task.cancel()
        if self.engine is not None:
            await self.engine.stop()
        if isinstance(self.routing, LocalRouting) and self.service.config.state_path:
            await self.service.save_state(self.service.config.state_path)
        if self._writer is not None:
            await self._writer.close()
        if self._http is not None:
            await asyncio.to_thread(self._http.shutdown)
            self._http.server_close()

    # -- background ---------------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        """Expiry, feedback timeouts and worker membership, off the request path."""
        state_path = self.service.config.state_path
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                self._sweep_once()
                due = time.monotonic() - last_save >= STATE_SAVE_INTERVAL_S
                if state_path and due and isinstance(self.routing, LocalRouting):
                    await self.service.save_state(state_path)
                    last_save = time.monotonic()
            except Exception:  # keep sweeping; one bad pass must not stop expiry for good
                logger.exception("sweep failed")

    def _sweep_once(self) -> None:
        live = frozenset(self._client.instance_ids())
        self._known_workers = drop_departed(self.routing, self._known_workers, live)
        now = time.monotonic()
        self.metrics.keep_workers(live, now)
        self._quarantine.prune(live, now)
        swept = self.routing.maintain(now)
        if swept["feedback_timeouts"]:
            self.metrics.feedback_timeouts.inc(swept["feedback_timeouts"])
        # Quarantined workers are not routable here even when routing, left with none else,
        # still tries them: a dead worker stays in discovery until its lease ends, and every
        # request to it fails (benchmarks.chaos no_worker), so /health must not say ready.
        routable = len(live - self._quarantine.workers() - self._mismatched())
        self.metrics.workers.set(routable)
        remote = isinstance(self.routing, RemoteRouting)
        no_router = self.routing.unavailable_reason() if remote else None
        self.metrics.router_available.set(no_router is None)
        if self.engine is not None and self.engine.prompt_limit is not None:
            self.prompt_limit = self.engine.prompt_limit
        expected = self.health.update(routable, now, no_router, self.prompt_limit)
        self.metrics.expected_workers.set(expected)
        if self.engine is not None:
            self.metrics.observe_engine(self.engine.capacity, self.engine.waiting)
        if isinstance(self.routing, LocalRouting):  # a shared router exports its own
            self.metrics.observe_learner(self.service.router.bandit.prefill_ratios())
            self.metrics.kv_hold_ms.set(self.service.load.hold_ms)
        self.metrics.claims.set(swept["claiming_prefixes"])
        self.metrics.tracked_prefixes.set(swept["prefixes"])
        self.metrics.sync_prefix_evictions(swept["prefix_evictions"])
        self.metrics.sync_feedback_dropped(swept["feedback_dropped"])
        if self._writer is not None:
            self.metrics.sync_trace_lost(self._writer.lost)

    # -- request path -------------------------------------------------------------------------
    async def generate(self, request: dict[str, Any], context: Any) -> AsyncIterator[Any]:
        arrival = time.time()
        request_id = _request_id(context)
        hints = hints_from_request(request)
        token_ids: list[int] = request.get("token_ids") or []
        stop = request.get("stop_conditions") or {}
        route = route_request(
            request_id, hints, len(token_ids), stop.get("max_tokens"), self.prompt_limit
        )
        # A prompt no worker can hold is refused before any work that walks its tokens.
        too_long = self._beyond_capacity(len(token_ids))
        # Dynamo's per-block hashes, once per request: for the router (chained) and the trace.
        prompt_hashes: list[int] = [] if too_long else block_hashes(token_ids, self.block_size)
        if not too_long:
            route.block_hashes = chain_hashes(prompt_hashes)
        self.metrics.active.inc()
        excluded: set[int] = set()
        retries = 0
        decision: Decision | None = None
        decision_us = 0.0
        measure = _Measure()  # the whole request as the client sees it, across attempts
        carry = Continuation(request, self._config.migration_limit)
        attempt_request, attempt_ids = request, token_ids
        error: str | None = None
        outcome = "error"
        open_decision: str | None = None  # decision whose "finish" feedback is still owed
        try:
            if too_long:
                raise WorkerRejected(0, too_long)
            while True:
                decision, decision_us = await self._decide(
                    route, attempt_ids, excluded, retries + carry.migrations
                )
                open_decision = decision.request_id
                measure.new_attempt(len(attempt_ids))
                try:
                    forward = self._forward(attempt_request, context, decision, measure, carry)
                    async for item in forward:
                        yield item
                    # A client disconnect kills the context: the worker stops and its stream
                    # simply ends, so an ended stream alone does not mean success.
                    outcome = "cancelled" if _context_cancelled(context) else "ok"
                    if outcome == "cancelled":
                        error = "client disconnected"
                    break
                except WorkerFailed as failure:
                    self.routing.feedback(
                        Feedback(event="finish", request_id=open_decision, ok=False)
                    )
                    open_decision = None
                    self.metrics.worker_errors.labels(worker=f"{failure.worker_id:x}").inc()
                    self._quarantine.add(failure.worker_id)
                    if failure.before_first_token and retries < self._config.max_retries:
                        excluded.add(failure.worker_id)
                        retries += 1
                        self.metrics.retries.inc()
                        logger.warning("%s; retrying request %s elsewhere", failure, request_id)
                        continue
                    if not failure.before_first_token and not _context_cancelled(context):
                        follow = carry.next_request(request)
                        if follow is not None:
                            excluded.add(failure.worker_id)
                            attempt_request, attempt_ids = follow, follow["token_ids"]
                            # Placed for the prompt it is: original + tokens sent.
                            route = msgspec.structs.replace(route, prompt_tokens=len(attempt_ids))
                            self.metrics.migrations.inc()
                            logger.warning(
                                "%s after %d tokens; continuing request %s elsewhere",
                                failure,
                                measure.tokens,
                                request_id,
                            )
                            continue
                    error = str(failure)
                    raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome, error = "cancelled", "client disconnected"
            raise
        except WorkerRejected as exc:
            outcome, error = "rejected", str(exc)
            raise exc.to_client() from exc
        except Unavailable as exc:  # no worker, or admission refused it
            outcome, error = "unavailable", str(exc)
            self.metrics.unavailable.labels(reason=exc.reason).inc()
            raise as_http_error(exc) from exc
        except Exception as exc:
            error = error or repr(exc)
            raise
        finally:
            self.metrics.active.dec()
            self._finish(
                arrival,
                request_id,
                request,
                route,
                token_ids,
                prompt_hashes,
                decision,
                open_decision,
                decision_us,
                retries,
                carry.migrations,
                measure,
                outcome,
                error,
            )

    def _beyond_capacity(self, prompt_tokens: int) -> str | None:
        """Why a prompt of this length can never be served (longer than the KV capacity of
        every worker, from their cards), or None. Why: such a prompt is refused by the worker
        anyway, after the processor has hashed, scored and copied millions of tokens on its
        event loop (hundreds of ms for a 10 MiB prompt, every other request waiting)."""
        capacity = self.engine.capacity if self.engine is not None else None
        if not capacity:
            return None
        limit = max(capacity.values()) * self.block_size
        if prompt_tokens <= limit:
            return None
        return (
            f"request rejected: prompt of {prompt_tokens} tokens exceeds the KV capacity of "
            f"every worker ({limit} tokens)"
        )

    def _mismatched(self) -> frozenset[int]:
        """Workers counting KV in another block size (engine_state.py): never routed to."""
        return self.engine.mismatched if self.engine is not None else frozenset()

    async def _decide(
        self, route: RouteRequest, token_ids: list[int], excluded: set[int], attempt: int
    ) -> tuple[Decision, float]:
        assert self.routing is not None, "start() first"
        cfg = self._config
        live = await wait_for_routable(
            self._client.instance_ids,
            excluded | self._mismatched(),
            cfg.no_worker_wait_s,
            NO_WORKER_RETRY_AFTER_S,
            asyncio.get_running_loop().time,
        )
        live = self._quarantine.healthy(live)
        if attempt:  # a retry is a new decision with its own feedback record, same turn
            route = msgspec.structs.replace(
                route, request_id=f"{route.request_id}#{attempt}", retry=True
            )
        routing = self.routing
        decision_s = 0.0

        async def timed(r: RouteRequest) -> Decision:  # the last decision's own time
            nonlocal decision_s
            t0 = time.perf_counter()
            d = await routing.decide(r, token_ids, live)
            decision_s = time.perf_counter() - t0
            return d

        if attempt:
            decision = await timed(route)
        else:  # a first attempt may wait for admission (never a retry: it was admitted)
            decision = await self.admission.place(route, timed)
        self.metrics.decision.observe(decision_s)
        self.metrics.decisions.labels(
            worker=f"{decision.worker_id:x}", reason=decision.reason
        ).inc()
        return decision, decision_s * 1e6

    async def _forward(
        self,
        request: dict[str, Any],
        context: Any,
        decision: Decision,
        measure: _Measure,
        carry: Continuation,
    ) -> AsyncIterator[Any]:
        """Stream one attempt from the chosen worker; raise ``WorkerFailed`` on its faults
        (``before_first_token``: before this attempt's first output)."""
        wid = decision.worker_id
        keep_ids = self._config.trace_tokens
        stall_s = self._config.stream_stall_timeout_s
        try:
            # One deadline for sending the request and for its first token: a worker that
            # accepts the connection but never answers otherwise holds the request for the
            # request plane's own timeout (5 s in Dynamo 1.6.1) whatever ours says.
            # asyncio.timeout, not wait_for: no extra Task per request on the hot path.
            async with asyncio.timeout(self._config.first_token_timeout_s):
                stream = await self._client.direct(request, wid, annotated=False, context=context)
                iterator = stream.__aiter__()
                first = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise WorkerFailed(wid, True, exc) from exc
        if (refusal := _item_error(first)) is not None:
            raise WorkerRejected(wid, refusal)
        measure.attempt_first = measure.last = time.perf_counter()
        if measure.first is None:
            measure.first = measure.attempt_first
        self.routing.feedback(Feedback(event="first_token", request_id=decision.request_id))
        self.admission.notify()
        item: Any = first
        # The rest, with outputs that queued up merged; a worker silent for stall_s while the
        # relay waits for it fails with TimeoutError (never while the client takes its time).
        relay = Relay(iterator, stall_s)
        try:
            while True:
                _observe(measure, item, keep_ids, carry)
                yield item
                try:
                    item = await relay.next()
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:
                    if _finishes(item):  # the whole answer came: only its stream's end was lost
                        logger.warning("worker %x: stream lost after the last output: %r", wid, exc)
                        return
                    raise WorkerFailed(wid, False, exc) from exc
                if item is None:
                    return
                if (refusal := _item_error(item)) is not None:
                    raise WorkerRejected(wid, refusal)
                measure.last = time.perf_counter()
        finally:
            relay.close()
            if relay.merged:
                self.metrics.outputs_merged.inc(relay.merged)

    def _finish(
        self,
        arrival: float,
        request_id: str,
        request: dict[str, Any],
        route: RouteRequest,
        token_ids: list[int],
        prompt_hashes: list[int],
        decision: Decision | None,
        open_decision: str | None,
        decision_us: float,
        retries: int,
        migrations: int,
        measure: _Measure,
        outcome: str,
        error: str | None,
    ) -> None:
        """Feedback, metrics and the trace record; O(1) work, no awaiting."""
        self.admission.notify()
        e2e_ms = (time.perf_counter() - measure.start) * 1000.0
        ttft_ms, itl_ms = measure.ttft_ms, measure.itl_ms
        m = self.metrics
        m.requests.labels(outcome=outcome).inc()
        if ttft_ms is not None:
            m.ttft.observe(ttft_ms / 1000.0)
        if itl_ms is not None:
            m.itl.observe(itl_ms / 1000.0)
        m.e2e.observe(e2e_ms / 1000.0)
        # The KV hit ratio counts prompts a worker was given: not those refused before one
        # (too long, no worker, admission), whose 0 cached tokens say nothing of the cache. A
        # continuation's cached tokens count within the original prompt.
        sent = len(token_ids) if decision is not None and decision.worker_id >= 0 else 0
        m.observe_tokens(sent, min(measure.cached or 0, sent), measure.tokens)
        # The same in the trace, whose prompt_tokens is the original prompt's.
        cached = None if measure.cached is None else min(measure.cached, len(token_ids))
        if open_decision is not None:
            self.routing.feedback(
                finish_feedback(
                    open_decision,
                    measure.attempt_prompt,  # the cached tokens are of this attempt's prompt
                    measure.cached,
                    measure.attempt_ttft_ms,
                    measure.attempt_itl_ms,
                    measure.attempt_tokens,
                    outcome,
                )
            )
        if self._writer is None:
            return
        keep = self._config.trace_tokens
        self._writer.put(
            TraceRecord(
                v=SCHEMA_VERSION,
                ts=arrival,
                request_id=request_id,
                x_request_id=annotated_request_id(request.get("annotations")),
                prompt_tokens=len(token_ids),
                block_size=self.block_size,
                block_hashes=prompt_hashes,
                prefix_id=route.prefix_id,
                total_requests=route.total_requests,
                iat_ms=route.iat_ms,
                osl=route.osl,
                latency_sensitivity=route.latency_sensitivity,
                priority=route.priority,
                pin_ttl_s=route.pin_ttl_s,
                worker_id=None if decision is None else decision.worker_id,
                reason=None if decision is None else decision.reason,
                home_worker_id=None if decision is None else decision.home_worker_id,
                inferred_conversation=None if decision is None else decision.inferred_conversation,
                candidates=[] if decision is None else decision.candidates,
                decision_us=None if decision is None else decision_us,
                retries=retries,
                migrations=migrations,
                ttft_ms=ttft_ms,
                itl_ms=itl_ms,
                e2e_ms=e2e_ms,
                output_tokens=measure.tokens,
                cached_tokens=cached,
                finish_reason=measure.finish_reason or (outcome if outcome != "ok" else None),
                error=error,
                prompt_token_ids=token_ids[:keep] if keep else None,
                output_token_ids=measure.out_ids if keep else None,
            )
        )


def _observe(measure: _Measure, item: Any, keep_ids: int, carry: Continuation) -> None:
    """Count tokens and pick usage / finish reason out of one worker output."""
    if not isinstance(item, dict):
        return
    ids = item.get("token_ids")
    if ids:
        measure.tokens += len(ids)
        measure.attempt_tokens += len(ids)
        carry.record(ids)
        if keep_ids:
            out = measure.out_ids if measure.out_ids is not None else []
            if len(out) < keep_ids:
                out.extend(ids[: keep_ids - len(out)])
            measure.out_ids = out
    usage = item.get("completion_usage")
    if isinstance(usage, dict):
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and details.get("cached_tokens") is not None:
            measure.cached = int(details["cached_tokens"])
    if item.get("finish_reason"):
        measure.finish_reason = str(item["finish_reason"])


def _finishes(item: Any) -> bool:
    """Whether a worker output ends the answer (a finish reason). Why: a stream that breaks
    after it lost nothing; continuing it elsewhere would send tokens after the finish."""
    return isinstance(item, dict) and bool(item.get("finish_reason"))


def _item_error(item: Any) -> str | None:
    """The error a worker output carries instead of tokens, if any: Dynamo's error finish
    reason (``{"finish_reason": {"error": "..."}}``) or an error field."""
    if not isinstance(item, dict):
        return None
    reason = item.get("finish_reason")
    if isinstance(reason, dict) and "error" in reason:
        return str(reason["error"])
    if isinstance(reason, str) and reason.startswith("error"):
        return reason
    error = item.get("error")
    return str(error) if error else None


def _context_cancelled(context: Any) -> bool:
    """Whether the request's context was stopped or killed (client gone); False without one."""
    if context is None:
        return False
    try:
        return bool(context.is_stopped() or context.is_killed())
    except Exception:
        return False


def _request_id(context: Any) -> str:
    try:
        rid = context.id()
    except Exception:  # no context (direct calls in tests)
        rid = None
    return str(rid) if rid else uuid.uuid4().hex
