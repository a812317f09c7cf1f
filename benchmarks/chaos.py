"""Faults on real local stacks, measured from the client's side.

    python -m benchmarks.chaos [--short] [--only worker_kill,no_worker] [--out PATH]

Each fault is one function that starts its own stack (``deploy.local_stack``: simulated
``dynamo.mocker`` workers, loopback, file discovery, readiness polled), injects the fault into a
process that stack started, and returns its figures (the keys of ``chaos.json``) and details
(what a reader needs to trust them). ``--short`` is the reduced form the test suite runs
(tests/integration/test_chaos.py): shorter load phases, same faults.

* ``worker_kill``: streamed, hinted requests (max_tokens 300) at 10 req/s; one of two worker
  processes is SIGKILLed a third of the way in. ``failed`` counts every request that did not
  end in a full answer (HTTP error, SSE error event, short answer); ``migrated`` is the
  processor's migration counter.
* ``worker_freeze``: one of two workers SIGSTOPped for 10 s. ``back_in_s``: from SIGCONT until
  a request is answered by a worker other than the survivor (the thawed one, or its restart).
* ``no_worker``: the only worker killed (not restarted). ``first_503_s``: from the kill until a
  client first gets 503 (``null``: none within the scenario's cap).
* ``processor_kill``: the processor SIGKILLed under streamed load. ``first_error_s``: until a
  client first sees an error; ``serving_again_s``: until a request sent after the kill is
  answered in full (the launcher restarts the processor).
* ``trace_unwritable``: the trace path lies below a regular file, so it can never be created.
  ``lost``: the records of the answered requests (one each) that are not in a trace file;
  ``counted``: the rise of ``akr_processor_trace_records_dropped_total`` meanwhile.
* ``slow_readers``: 300 streamed requests (max_tokens 1500, 4 KiB receive buffer) that are never
  read; ``normal_p99_ms``: p99 latency of normal requests sent meanwhile. The workers have room
  for every stream's KV (the stack of ``chaos_clients``): with the default 1024 blocks only
  about 84 of the 300 answers fit, the processor's admission held the rest, and the figure
  measured normal requests waiting in that queue (overload), not the non-readers.
* ``long_prompt``: a 1 MiB prompt (well past the model's 131072-token context) through the
  gateway gives ``status``; a 10 MiB prompt sent straight to the stock frontend (past the
  gateway; the launchers give that frontend a 2 MB body limit, so it answers 413 and the
  prompt never reaches the processor) gives ``loop_lag_ms``: the upper bound of the highest
  bucket of the processor's event-loop lag histogram that filled meanwhile.

Writes ``benchmarks/results/chaos.json`` (figures only) and ``chaos_details.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.chaos_clients import slow_reader_stack_config
from benchmarks.gateway_overhead import cpu_by_process, cpu_since
from deploy.local_stack import LocalStack, StackConfig
from processor.traces import TraceRecord, poll_records, read_records

RESULTS = Path(__file__).resolve().parent / "results"
MACHINE = "simulated workers (dynamo.mocker) on 2 shared CPU cores, loopback"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# -- clients ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One request as its client saw it (times on the monotonic clock)."""

    sent: float
    ended: float = 0.0
    status: int | None = None
    tokens: int = 0
    finish: str | None = None
    error: str | None = None
    request_id: str = ""
    first_token: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.finish is not None


def chat_body(
    model: str, prompt: str, max_tokens: int, stream: bool, prefix: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if prefix is not None:
        body["nvext"] = {
            "agent_hints": {
                "prefix_id": prefix,
                "total_requests": 10,
                "osl": max_tokens,
                "iat": 200,
            }
        }
    return body


async def request(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout_s: float = 60.0
) -> Outcome:
    """POST a chat completion; a streamed answer is read to its end, counting tokens."""
    out = Outcome(sent=time.monotonic())
    try:
        async with session.post(
            f"{url}/v1/chat/completions",
            json=body,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            out.status = resp.status
            if resp.status != 200:
                out.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
            elif body.get("stream"):
                await _read_stream(resp, out)
            else:
                data = await resp.json()
                out.request_id = _rid(data.get("id", ""))
                out.tokens = data.get("usage", {}).get("completion_tokens", 0)
                out.finish = (data.get("choices") or [{}])[0].get("finish_reason")
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
    out.ended = time.monotonic()
    if out.ok and body.get("stream") and out.tokens != body["max_tokens"]:
        out.error = f"short answer: {out.tokens} of {body['max_tokens']} tokens"
    return out


async def _read_stream(resp: aiohttp.ClientResponse, out: Outcome) -> None:
    done = False
    async for raw in resp.content:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        chunk = json.loads(data)
        if "error" in chunk or "id" not in chunk:
            out.error = f"SSE error: {json.dumps(chunk)[:200]}"
            continue
        out.request_id = out.request_id or _rid(chunk["id"])
        for choice in chunk.get("choices") or []:
            if choice.get("delta", {}).get("content") and out.first_token is None:
                out.first_token = time.monotonic()
            out.finish = choice.get("finish_reason") or out.finish
        if chunk.get("usage"):
            out.tokens = chunk["usage"].get("completion_tokens", 0)
    if not done and out.error is None:
        out.error = "stream ended without [DONE]"


def _rid(response_id: str) -> str:
    return response_id.split("-", 1)[1] if response_id.startswith("chatcmpl-") else response_id


async def open_loop(
    make: Callable[[int], Any], rate: float, duration_s: float, stop: asyncio.Event | None = None
) -> list[Outcome]:
    """Start ``make(i)`` (a coroutine giving an Outcome) every 1/rate s for ``duration_s`` (or
    until ``stop``); wait for all of them."""
    tasks = []
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < duration_s and not (stop and stop.is_set()):
        tasks.append(asyncio.create_task(make(i)))
        i += 1
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
    return list(await asyncio.gather(*tasks))


# -- metrics ----------------------------------------------------------------------------------
async def scrape(session: aiohttp.ClientSession, url: str) -> Samples:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        text = await resp.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(samples: Samples, name: str, **labels: str) -> float:
    """One sample (0 if absent); with no labels, the sum over every label set."""
    if labels:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)
    return sum(v for (n, _), v in samples.items() if n == name)


def has_metric(samples: Samples, name: str) -> bool:
    return any(n == name for n, _ in samples)


def lag_upper_bound_ms(before: Samples, after: Samples, name: str) -> tuple[float | None, dict]:
    """The highest histogram bucket that gained samples between two scrapes, as its upper
    bound in ms (the histogram keeps no maximum); None when the metric is absent."""
    buckets: dict[float, float] = {}
    for (n, labels), value in after.items():
        if n == f"{name}_bucket":
            le = float(dict(labels)["le"])
            buckets[le] = value - before.get((n, labels), 0.0)
    if not buckets:
        return None, {}
    bounds = sorted(buckets)
    gained = {
        le: buckets[le] - (buckets[bounds[i - 1]] if i else 0.0) for i, le in enumerate(bounds)
    }
    filled = [le for le, n in gained.items() if n > 0]
    top = max(filled) if filled else 0.0
    histogram = {("+Inf" if math.isinf(le) else f"{le * 1000:g}ms"): n for le, n in gained.items()}
    # Past the last finite bucket only a lower bound is known: report that bound.
    if math.isinf(top):
        top = bounds[-2]
    return top * 1000.0, histogram


async def poll(what: str, probe: Callable[[], Any], timeout_s: float, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(every_s)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


@contextlib.contextmanager
def stack_of(
    config: StackConfig, prepare: Callable[[LocalStack], None] | None = None
) -> Iterator[LocalStack]:
    """A started stack; its work directory is removed after a scenario that ran to its end (its
    kills were the scenario), kept with its logs when the scenario itself broke."""
    stack = LocalStack(config)
    if prepare is not None:
        prepare(stack)
    with stack:
        yield stack
        stack.config.keep_workdir = False


async def routable(session: aiohttp.ClientSession, stack: LocalStack, n: int) -> bool:
    return metric(await scrape(session, stack.processor_metrics_url), "akr_processor_workers") == n


def two_workers(speedup: float = 10.0) -> StackConfig:
    """Two mocker processes (one worker each), so one of them can be hit."""
    return StackConfig(workers=2, split_workers=True, speedup=speedup)


# -- faults -----------------------------------------------------------------------------------
async def worker_kill(short: bool) -> tuple[dict, dict]:
    duration, rate, max_tokens = (20.0 if short else 60.0), 10.0, 300
    with stack_of(two_workers()) as stack:
        async with aiohttp.ClientSession() as session:
            await poll("2 routable workers", lambda: routable(session, stack, 2), 30)
            before = await scrape(session, stack.processor_metrics_url)

            def make(i: int) -> Any:
                body = chat_body(
                    stack.model_name,
                    f"kill {i}: " + "context " * 40,
                    max_tokens,
                    True,
                    f"c{i % 20}",
                )
                return request(session, stack.url, body, timeout_s=120)

            async def fault() -> float:
                await asyncio.sleep(duration / 3)
                await asyncio.to_thread(stack.kill, "mocker1")
                return time.monotonic()

            killer = asyncio.create_task(fault())
            outcomes = await open_loop(make, rate, duration)
            killed_at = await killer
            after = await scrape(session, stack.processor_metrics_url)
        restarts = stack.restarts("mocker1")
    failed = [o for o in outcomes if not o.ok]
    migrated = metric(after, "akr_processor_migrations_total") - metric(
        before, "akr_processor_migrations_total"
    )
    result = {"requests": len(outcomes), "failed": len(failed), "migrated": int(migrated)}
    details = {
        "load": f"{rate:g} req/s streamed, hinted (20 prefix ids), max_tokens {max_tokens}, "
        f"{duration:g} s; mocker1 SIGKILLed at {duration / 3:.0f} s",
        "failures": [_brief(o, killed_at) for o in failed[:10]],
        "failed_mid_stream": sum(1 for o in failed if o.first_token is not None),
        "retries": metric(after, "akr_processor_retries_total")
        - metric(before, "akr_processor_retries_total"),
        "migration_metric_present": has_metric(after, "akr_processor_migrations_total"),
        "mocker1_restarts": restarts,
        "ok_ttft_p50_ms": _ms(
            statistics.median([o.first_token - o.sent for o in outcomes if o.ok and o.first_token])
            if any(o.ok and o.first_token for o in outcomes)
            else None
        ),
    }
    return result, details


async def worker_freeze(short: bool) -> tuple[dict, dict]:
    freeze_s, cap_s = 10.0, 30.0
    with stack_of(two_workers()) as stack:
        async with aiohttp.ClientSession() as session:
            await poll("2 routable workers", lambda: routable(session, stack, 2), 30)

            async def attributed() -> bool:  # the supervisor knows whose registration is whose
                return bool(_instance_ids(stack, "mocker0") and _instance_ids(stack, "mocker1"))

            await poll("the workers' registrations attributed", attributed, 10)
            survivor = _instance_ids(stack, "mocker0")
            stack.signal("mocker1", signal.SIGSTOP)
            await asyncio.sleep(freeze_s)  # the fault itself: 10 s frozen
            stack.signal("mocker1", signal.SIGCONT)
            thawed = time.monotonic()
            back_in: float | None = None
            sent = 0
            while back_in is None and time.monotonic() - thawed < cap_s:
                batch = [
                    request(
                        session,
                        stack.url,
                        chat_body(stack.model_name, f"thaw {sent + k} " * 8, 4, False),
                        timeout_s=cap_s,
                    )
                    for k in range(4)
                ]
                sent += 4
                for out in await asyncio.gather(*batch):
                    worker = _worker_of(stack, out.request_id) if out.ok else None
                    if worker is not None and worker not in survivor:
                        back_in = min(back_in or math.inf, out.ended - thawed)
            restarts = stack.restarts("mocker1")
            status = stack.supervisor.status()["components"]["mocker1"]
            log = (stack.workdir / "mocker1.log").read_text(errors="replace")
    result = {"back_in_s": None if back_in is None else round(back_in, 2)}
    details = {
        "fault": f"mocker1 SIGSTOP for {freeze_s:g} s, then SIGCONT",
        "probe": "4 concurrent small requests at a time until one is answered by a worker other "
        "than mocker0 (worker id from the processor's trace)",
        "requests_sent_after_sigcont": sent,
        "mocker1_restarts": restarts,
        "mocker1_last_exit": status["last_exit"],
        # Whether the 10 s froze it past its discovery lease (a race with the lease's ~10 s).
        "lease_lost": "keep_alive failed" in log or restarts > 0,
    }
    return result, details


async def no_worker(short: bool) -> tuple[dict, dict]:
    cap_s = 15.0 if short else 30.0
    config = StackConfig(workers=1, speedup=10.0, supervise=False)
    with stack_of(config) as stack:
        async with aiohttp.ClientSession() as session:
            await asyncio.to_thread(stack.kill, "mocker0")
            killed = time.monotonic()
            seen_503 = asyncio.Event()

            async def one(i: int) -> Outcome:
                body = chat_body(stack.model_name, f"anyone there {i}?", 4, False)
                out = await request(session, stack.url, body, timeout_s=cap_s)
                if out.status == 503:
                    seen_503.set()
                return out

            outcomes = await open_loop(one, 4.0, cap_s, stop=seen_503)
            health = await _status(session, f"{stack.url}/health")
    first = [o.ended - killed for o in outcomes if o.status == 503]
    result = {"first_503_s": round(min(first), 2) if first else None}
    statuses: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else (o.error or "?").split(":")[0]
        statuses[key] = statuses.get(key, 0) + 1
    retry_after = [o.error for o in outcomes if o.status == 503][:1]
    details = {
        "fault": "the only mocker process SIGKILLed, supervision off (stays dead)",
        "probe": f"a request every 0.25 s, each waiting up to {cap_s:g} s",
        "statuses": statuses,
        "first_503_body": retry_after,
        "gateway_health_after": health,
    }
    return result, details


async def processor_kill(short: bool) -> tuple[dict, dict]:
    cap_s = 40.0
    # Speed 1: a 300-token answer streams for seconds, so answers are in flight at the kill.
    with stack_of(two_workers(speedup=1.0)) as stack:
        async with aiohttp.ClientSession() as session:
            await poll("2 routable workers", lambda: routable(session, stack, 2), 30)
            state: dict[str, Any] = {"killed": None}
            stop = asyncio.Event()
            health: list[tuple[float, int | str]] = []

            async def one(i: int) -> Outcome:
                body = chat_body(stack.model_name, f"pk {i}: " + "ctx " * 20, 300, True, f"p{i}")
                out = await request(session, stack.url, body, timeout_s=cap_s)
                killed = state["killed"]
                if killed is not None and out.sent > killed and out.ok:
                    stop.set()
                return out

            async def fault() -> None:
                await asyncio.sleep(3.0 if short else 5.0)
                state["killed"] = time.monotonic()
                await asyncio.to_thread(stack.kill, "processor")
                while not stop.is_set() and time.monotonic() - state["killed"] < cap_s:
                    health.append(
                        (
                            time.monotonic() - state["killed"],
                            await _status(session, stack.url + "/health"),
                        )
                    )
                    await asyncio.sleep(0.2)

            faulty = asyncio.create_task(fault())
            outcomes = await open_loop(one, 5.0, cap_s + 10.0, stop=stop)
            await faulty
            restarts = stack.restarts("processor")
    killed = state["killed"]
    errors = [o.ended - killed for o in outcomes if not o.ok and o.ended >= killed]
    again = [o.ended - killed for o in outcomes if o.ok and o.sent > killed]
    in_flight = [o for o in outcomes if o.sent < killed < o.ended]
    result = {
        "first_error_s": round(min(errors), 2) if errors else None,
        "serving_again_s": round(min(again), 2) if again else None,
    }
    down_health = [h for t, h in health if not again or t < min(again)]
    details = {
        "load": "5 req/s streamed, max_tokens 300, workers at speed 1; processor SIGKILLed after "
        f"{3 if short else 5} s; supervisor restarts it",
        "in_flight_at_kill": len(in_flight),
        "in_flight_errors_within_s": round(
            max((o.ended - killed for o in in_flight), default=0), 2
        ),
        "in_flight_failed": sum(1 for o in in_flight if not o.ok),
        "errors": [_brief(o, killed) for o in outcomes if not o.ok][:8],
        "gateway_health_while_down": sorted({str(h) for h in down_health}),
        "processor_restarts": restarts,
    }
    return result, details


async def trace_unwritable(short: bool) -> tuple[dict, dict]:
    n = 10 if short else 30

    def unwritable(stack: LocalStack) -> None:
        blocker = stack.workdir / "not-a-directory"
        blocker.write_text("a regular file: nothing can be created below it\n")
        stack.config.processor_env = {
            **stack.config.processor_env,
            "AKR_PROCESSOR_TRACE_PATH": str(blocker / "processor.jsonl"),
        }
        stack.trace_path = blocker / "processor.jsonl"

    with stack_of(StackConfig(workers=2, speedup=10.0), unwritable) as stack:
        async with aiohttp.ClientSession() as session:
            url = stack.processor_metrics_url
            name = "akr_processor_trace_records_dropped_total"
            before = await poll(
                "the stack's own requests' records counted", _all_lost(session, url), 20
            )
            outcomes = await asyncio.gather(
                *(
                    request(session, stack.url, chat_body(stack.model_name, f"trace {i}", 4, False))
                    for i in range(n)
                )
            )
            answered = sum(o.ok for o in outcomes)

            async def all_counted() -> bool:
                return metric(await scrape(session, url), name) - metric(before, name) >= answered

            with contextlib.suppress(TimeoutError):
                await poll("every lost record counted", all_counted, 10)
            after = await _settled(session, url, name)
            written = len(list(read_records(stack.trace_path))) if stack.trace_path.exists() else 0
    by_reason = {
        dict(lbl).get("reason", ""): v - before.get((n_, lbl), 0.0)
        for (n_, lbl), v in after.items()
        if n_ == name
    }
    result = {
        "lost": answered - written,
        "counted": int(metric(after, name) - metric(before, name)),
    }
    details = {
        "fault": "AKR_PROCESSOR_TRACE_PATH below a regular file (cannot be created, even as root)",
        "requests": n,
        "answered": answered,
        "records_in_a_trace_file": written,
        "counted_by_reason": by_reason,
    }
    return result, details


async def slow_readers(short: bool) -> tuple[dict, dict]:
    clients, measure_s = 300, (6.0 if short else 15.0)
    with stack_of(slow_reader_stack_config()) as stack:
        async with aiohttp.ClientSession() as session:
            body = json.dumps(
                chat_body(stack.model_name, "write a very long report " * 10, 1500, True)
            ).encode()
            port = int(stack.url.rsplit(":", 1)[1])
            cpu_before = cpu_by_process(stack.procs)
            t_open = time.perf_counter()
            wall_open = time.time()
            wall_minus_mono = wall_open - time.monotonic()  # Outcome times are monotonic
            socks = await asyncio.to_thread(_open_non_readers, port, body, clients)
            try:
                url = stack.processor_metrics_url
                peak = 0.0

                async def streams_in() -> bool:
                    nonlocal peak
                    active = metric(await scrape(session, url), "akr_processor_active_requests")
                    peak = max(peak, active)
                    return active >= min(clients, 200)

                with contextlib.suppress(TimeoutError):
                    await poll("the non-reading streams in flight", streams_in, 15, 0.2)

                def make(i: int) -> Any:
                    return request(
                        session,
                        stack.url,
                        chat_body(stack.model_name, f"normal {i}", 8, False),
                        timeout_s=60,
                    )

                stalled = 0.0

                async def all_dropped() -> bool:
                    nonlocal stalled
                    samples = await scrape(session, stack.url + "/metrics")
                    stalled = metric(samples, "akr_gateway_stalled_clients_total")
                    return stalled >= clients

                async def dropped_after() -> float:
                    """Seconds from opening the non-readers until the gateway dropped all."""
                    with contextlib.suppress(TimeoutError):
                        await poll("every non-reader dropped", all_dropped, 60, 0.25)
                    return time.perf_counter() - t_open

                watch = asyncio.ensure_future(dropped_after())  # alongside the probe
                outcomes = await open_loop(make, 5.0, measure_s)
                dropped_s = await watch
                active_after = metric(await scrape(session, url), "akr_processor_active_requests")
                cpu_s = cpu_since(stack.procs, cpu_before)
            finally:
                for s in socks:
                    s.close()
        at_least = len(outcomes) + clients  # the trace writer flushes in batches
        records = await asyncio.to_thread(
            poll_records, stack.trace_path, lambda rs: len(rs) >= at_least, 10.0
        )
    latencies = [(o.ended - o.sent) * 1000 for o in outcomes]
    start = min((o.sent for o in outcomes), default=0.0)
    slowest = sorted(outcomes, key=lambda o: o.sent - o.ended)[:3]
    probe_ids = {o.request_id for o in outcomes}
    relayed = sorted(
        r.output_tokens for r in records if r.ts >= wall_open and r.request_id not in probe_ids
    )
    ok = [o for o in outcomes if o.ok]
    result = {"clients": clients, "normal_p99_ms": round(percentile(latencies, 99), 1)}
    details = {
        "fault": f"{clients} streamed requests (max_tokens 1500, 4 KiB receive buffer) never read",
        "gpu_blocks_per_worker": stack.config.gpu_blocks,
        "processor_active_requests_peak": peak,
        "normal_requests": len(outcomes),
        "normal_ok": len(ok),
        "normal_p50_ms": round(percentile(latencies, 50), 1),
        "normal_statuses": sorted({str(o.status) for o in outcomes}),
        "probe": f"non-streamed max_tokens 8 at 5 req/s for {measure_s:g} s",
        "stalled_clients_dropped": stalled,
        "all_dropped_within_s": round(dropped_s, 1),  # from opening them (60 s cap)
        "processor_active_requests_after": active_after,
        # When the slowest normal requests were sent (s into the probe) and what they took.
        "slowest_sent_s_ms": [
            [round(o.sent - start, 1), round((o.ended - o.sent) * 1000, 1)] for o in slowest
        ],
        # Where their time went: client -> processor (gateway, stock frontend), the processor's
        # TTFT (of which its decision), and from its first token to the client's last byte.
        "slowest_split_ms": [_split(o, records, wall_minus_mono) for o in slowest],
        # CPU seconds of each process from opening the non-readers to the probe's end.
        "cpu_s": cpu_s,
        # Tokens each non-reader was sent (median, max) before the gateway dropped it.
        "non_reader_tokens": [
            relayed[len(relayed) // 2] if relayed else None,
            relayed[-1] if relayed else None,
        ],
    }
    return result, details


def _split(
    out: Outcome, records: list[TraceRecord], wall_minus_mono: float
) -> dict[str, float | None]:
    rec = next((r for r in records if r.request_id == out.request_id), None)
    total = (out.ended - out.sent) * 1000
    if rec is None or rec.ttft_ms is None:
        return {"total": round(total, 1), "to_processor": None}
    to_processor = (rec.ts - (out.sent + wall_minus_mono)) * 1000
    return {
        "total": round(total, 1),
        "to_processor": round(to_processor, 1),
        "processor_ttft": round(rec.ttft_ms, 1),
        "decision": round((rec.decision_us or 0.0) / 1000, 1),
        "after_first_token": round(total - to_processor - rec.ttft_ms, 1),
    }


async def long_prompt(short: bool) -> tuple[dict, dict]:
    with stack_of(StackConfig(workers=2, speedup=10.0)) as stack:
        async with aiohttp.ClientSession() as session:
            url = stack.processor_metrics_url
            lag = "akr_processor_event_loop_lag_seconds"
            long_1m = "lorem ipsum dolor sit amet " * ((1 << 20) // 27 + 1)
            gateway = await request(
                session, stack.url, chat_body(stack.model_name, long_1m, 4, False), timeout_s=120
            )
            before = await scrape(session, url)
            huge = "lorem ipsum dolor sit amet " * (10 * (1 << 20) // 27 + 1)
            direct = await request(
                session,
                stack.frontend_url,
                chat_body(stack.model_name, huge, 4, False),
                timeout_s=120,
            )
            gateway_10m = await request(
                session, stack.url, chat_body(stack.model_name, huge, 4, False), timeout_s=120
            )
            # Let the loop-lag watcher take its next samples after the request.
            await asyncio.sleep(0.5)
            after = await scrape(session, url)
            normal = await request(
                session, stack.url, chat_body(stack.model_name, "still fine?", 4, False)
            )
    loop_lag_ms, buckets = lag_upper_bound_ms(before, after, lag)
    result = {"status": gateway.status, "loop_lag_ms": loop_lag_ms}
    details = {
        "prompt_1mib_via_gateway": {"status": gateway.status, "error": gateway.error},
        "prompt_10mib_to_stock_frontend": {"status": direct.status, "error": direct.error},
        "prompt_10mib_via_gateway": {"status": gateway_10m.status, "error": gateway_10m.error},
        "loop_lag_histogram_gained": buckets or "metric absent",
        # 0: the stock frontend refused the 10 MiB body itself (DYN_HTTP_BODY_LIMIT_MB from the
        # launcher); without that limit it was 1, and the processor's loop held the prompt's
        # 7.4 million token ids as one Python list (a 100-500 ms lag sample).
        "processor_requests_during": metric(after, "akr_processor_requests_total")
        - metric(before, "akr_processor_requests_total"),
        "normal_request_after": normal.status,
        "loop_lag_note": "upper bound of the highest filled bucket of "
        "akr_processor_event_loop_lag_seconds during the 10 MiB requests",
    }
    return result, details


SCENARIOS: dict[str, Callable[[bool], Any]] = {
    "worker_kill": worker_kill,
    "worker_freeze": worker_freeze,
    "no_worker": no_worker,
    "processor_kill": processor_kill,
    "slow_readers": slow_readers,
    "long_prompt": long_prompt,
    "trace_unwritable": trace_unwritable,
}


# -- helpers ----------------------------------------------------------------------------------
def _brief(out: Outcome, t0: float) -> dict[str, Any]:
    return {
        "sent_s": round(out.sent - t0, 2),
        "ended_s": round(out.ended - t0, 2),
        "status": out.status,
        "tokens": out.tokens,
        "streamed": out.first_token is not None,
        "error": (out.error or "")[:160],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _instance_ids(stack: LocalStack, name: str) -> set[int]:
    """Worker ids (Dynamo instance ids) registered by one of the stack's processes."""
    with stack.supervisor.lock:
        child = next(c for c in stack.procs if c.name == name)
        keys = set(child.registered)
    served = [k for k in keys if k.startswith("instances/workers%2Fbackend%2Fgenerate")]
    return {int(key.rsplit("%2F", 1)[1], 16) for key in served}


def _worker_of(stack: LocalStack, request_id: str, timeout_s: float = 5.0) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stack.trace_path.exists():
            for rec in read_records(stack.trace_path):
                if rec.request_id == request_id:
                    return rec.worker_id
        time.sleep(0.05)
    return None


async def _status(session: aiohttp.ClientSession, url: str) -> int | str:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return resp.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        return type(exc).__name__


def _all_lost(session: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[Samples | None]]:
    """A probe: the processor's metrics once every request it finished (the stack's warm-up
    ones) has its trace record counted as dropped, None before. Waiting for the count to hold
    still for a second was not enough: on a loaded machine the warm-up's loss was counted
    later, during the scenario, as one more loss than the scenario's requests."""

    async def probe() -> Samples | None:
        now = await scrape(session, url)
        finished = metric(now, "akr_processor_requests_total")
        lost = metric(now, "akr_processor_trace_records_dropped_total")
        return now if finished > 0 and lost >= finished else None

    return probe


async def _settled(session: aiohttp.ClientSession, url: str, name: str) -> Samples:
    """Scrape until ``name`` holds still for 1 s (the trace writer flushes in batches)."""
    last = await scrape(session, url)
    for _ in range(20):
        await asyncio.sleep(1.0)
        now = await scrape(session, url)
        if metric(now, name) == metric(last, name):
            return now
        last = now
    return last


def _open_non_readers(port: int, body: bytes, count: int) -> list[socket.socket]:
    """``count`` streamed requests on sockets with a small receive buffer, never read."""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(head + body)
        socks.append(s)
    return socks


# -- running ----------------------------------------------------------------------------------
@dataclass
class Report:
    short: bool
    results: dict[str, dict] = field(default_factory=dict)
    details: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


async def run(names: list[str], short: bool) -> Report:
    report = Report(short)
    for name in names:
        t0 = time.monotonic()
        print(f"chaos: {name} ...", file=sys.stderr, flush=True)
        result, details = await SCENARIOS[name](short)
        report.results[name] = result
        report.details[name] = details
        report.seconds[name] = round(time.monotonic() - t0, 1)
        print(f"chaos: {name} {json.dumps(result)} ({report.seconds[name]} s)", file=sys.stderr)
    return report


def write(report: Report, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    ordered = {k: report.results[k] for k in SCENARIOS if k in report.results}
    out.write_text(json.dumps(ordered, indent=1) + "\n")
    details = out.with_name(out.stem + "_details.json")
    meta = {"machine": MACHINE, "short": report.short, "seconds": report.seconds}
    details.write_text(json.dumps({"run": meta, **report.details}, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--short", action="store_true", help="the reduced form of the test suite")
    parser.add_argument("--only", default=None, help="comma list of scenarios")
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    report = asyncio.run(run(names, args.short))
    write(report, args.out)
    print(json.dumps({k: report.results[k] for k in names}, indent=1))
    print(f"wrote {args.out} and {args.out.with_name(args.out.stem + '_details.json')}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
