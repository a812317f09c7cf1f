"""Worker health as the processor sees it: routable against expected workers, ``/health``,
and the bounded wait for a worker when none is routable.

Why: a worker can be lost without anyone noticing. A worker frozen past its discovery lease
comes back alive but out of discovery for good; a killed one leaves discovery only when its
lease runs out; a silent one is caught by the first-token deadline and quarantined. The
processor sees each of these as fewer *routable* workers (in discovery, not quarantined) than
it *expects*, and says so in a gauge pair and in ``GET /health`` on its metrics port:

* 200 ``{"status": "ready", ...}``: at least one routable worker and no fewer than expected;
* 200 ``{"status": "degraded", ...}``: some routable, fewer than expected (still serving);
* 503 ``{"status": "no_workers", ...}``: nothing to route to;
* 503 ``{"status": "no_router", ...}``: with a standalone router
  (``AKR_PROCESSOR_ROUTER_ENDPOINT``), none is in discovery: no request can be placed;
* 503 ``{"status": "router_timeout", ...}``: the standalone router is in discovery but leaves
  calls unanswered (processor/routing.py ``ROUTER_SILENT_AFTER``), until it answers again;
* 503 ``{"status": "stalled", ...}``: the processor's background sweep (which refreshes these
  numbers every second) has not run for ``STALL_S``, i.e. its event loop is stuck;
* 503 ``{"status": "draining", ...}``: SIGTERM came; it has left discovery and finishes what
  it holds (a gateway asking this ``/health`` turns not ready with it);
* 503 ``{"status": "starting", ...}``: it has not yet seen its first worker.

Every answer after start-up also names the public ``model`` and, once a worker's card states
it, its ``prompt_limit``: the longest prompt some worker takes now (tokens). The gateway reads
it to check prompts (``frontend/health.py``): unlike the context the stock frontend lists
(registered once; Dynamo 1.6.1 lets a registered model change only its taints), it follows
workers that join, leave or change.

``GET /live`` is the liveness probe: 200 while the event loop ticks (a timer every 50 ms, the
loop-lag watch), 503 ``{"status": "stalled"}`` once it has not for ``STALL_S``. It answers
from start-up on, also while the processor waits for its first worker (model loading can
take minutes), so Kubernetes restarts a processor whose loop is stuck and nothing else.

Expected workers: ``AKR_PROCESSOR_EXPECTED_WORKERS`` when set (a fleet of known size);
otherwise the most workers routable at once within the last
``AKR_PROCESSOR_EXPECTED_WORKERS_WINDOW_S`` (a lost worker shows as degraded for that long,
then a deliberate scale-down is accepted as the new normal).

Without a routable worker a request waits at most ``AKR_PROCESSOR_NO_WORKER_WAIT_S`` for one
(a restarting worker re-registers within seconds), then fails with ``Unavailable``, raised to
the stock frontend as Dynamo's ``HttpError(503)`` (``as_http_error``). Why that type: the
stock frontend (1.6.1) replaces the text of any error from its engine with a generic one, so
only a status survives; a plain exception reaches the client as 500, ``HttpError(503)`` as
503 (non-streamed) or an SSE error event with code 503 (streamed), which the gateway turns
into 503 with ``Retry-After``. (Dynamo's ``WorkerUnavailable`` also gives 503, but the
frontend then treats the processor itself as not ready and refuses the model outright.)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.unavailable import Unavailable

STALL_S = 10.0  # sweep silent this long: the loop is stuck, /health answers 503
NO_WORKER_POLL_S = 0.05  # how often a request waiting for a worker looks again


class WorkerHealth:
    """Routable and expected worker counts; updated by the sweep, read by ``/health``.

    ``update`` runs on the event loop; ``answer`` in the HTTP server's threads. They share one
    tuple, replaced whole, so a reader never sees half an update. The clock is passed in.

    The recent peak is a sliding-window maximum: the counts that may still become the peak,
    each after the last larger one, so a second loss is not forgotten when the first ages out.
    Bounded: the counts held decrease strictly, at most peak + 1 of them.
    """

    def __init__(self, expected: int | None, window_s: float, model: str | None = None) -> None:
        self._fixed = expected
        self._window_s = window_s
        self._model = model
        self._recent: deque[tuple[float, int]] = deque()  # (when, routable), counts decreasing
        # routable, expected, when, why no router places requests (None: one does), limit
        self._state: tuple[int, int, float, str | None, int | None] | None = None
        self.draining = False  # set once, on SIGTERM (processor/__main__.py)
        self._beat: float | None = None  # when the event loop last ticked (``beat``)

    def beat(self, now: float) -> None:
        """The event loop ticked at ``now`` (called on the loop; read by ``live``)."""
        self._beat = now

    def live(self, now: float) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of ``GET /live`` (module docstring)."""
        beat = self._beat
        if beat is not None and now - beat > STALL_S:
            return 503, {"status": "stalled", "last_tick_s_ago": round(now - beat, 1)}
        return 200, {"status": "alive"}

    def update(
        self,
        routable: int,
        now: float,
        no_router: str | None = None,
        prompt_limit: int | None = None,
    ) -> int:
        """Record the routable count at ``now`` (and why no router places requests, the
        status to answer: ``no_router``, ``router_timeout``; and the longest prompt a worker
        takes); returns the expected count."""
        recent = self._recent
        while recent and recent[-1][1] <= routable:
            recent.pop()
        recent.append((now, routable))
        while now - recent[0][0] > self._window_s:
            recent.popleft()
        expected = self._fixed if self._fixed is not None else recent[0][1]
        self._state = (routable, expected, now, no_router, prompt_limit)
        return expected

    def answer(self, now: float) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of ``GET /health`` (module docstring)."""
        if self._state is None:
            return 503, {"status": "starting", "routable_workers": 0, "expected_workers": 0}
        routable, expected, at, no_router, prompt_limit = self._state
        body: dict[str, Any] = {"routable_workers": routable, "expected_workers": expected}
        if self._model is not None:
            body["model"] = self._model
        if prompt_limit is not None:
            body["prompt_limit"] = prompt_limit
        if self.draining:
            return 503, {"status": "draining", **body}
        if now - at > STALL_S:
            return 503, {"status": "stalled", **body, "last_update_s_ago": round(now - at, 1)}
        if routable == 0:
            return 503, {"status": "no_workers", **body}
        if no_router is not None:
            return 503, {"status": no_router, **body}
        return 200, {"status": "ready" if routable >= expected else "degraded", **body}


# The retry time a "no worker" failure names in its text. The stock frontend passes on only the
# 503 status, not the text, so clients get the gateway's Retry-After
# (AKR_GATEWAY_RETRY_AFTER_S); the number is for the trace and the log.
NO_WORKER_RETRY_AFTER_S = 5


async def wait_for_routable(
    instance_ids: Callable[[], Iterable[int]],
    excluded: set[int],
    wait_s: float,
    retry_after_s: int,
    clock: Callable[[], float],
) -> frozenset[int]:
    """The workers in discovery minus ``excluded``, waiting up to ``wait_s`` for one to
    appear; raises ``Unavailable("no_worker", ...)`` after that."""
    live = frozenset(instance_ids()) - excluded
    if live:
        return live
    deadline = clock() + wait_s
    while not live:
        remaining = deadline - clock()
        if remaining <= 0:
            raise Unavailable("no_worker", retry_after_s, f"no routable worker within {wait_s:g} s")
        await asyncio.sleep(min(NO_WORKER_POLL_S, remaining))
        live = frozenset(instance_ids()) - excluded
    return live


def as_http_error(exc: Unavailable) -> Exception:
    """What the processor raises to the stock frontend for ``exc`` (module docstring)."""
    from dynamo.llm.exceptions import HttpError

    return HttpError(503, str(exc))


IDLE_TIMEOUT_S = 10.0  # a metrics/health connection idle this long is closed
METRICS_PATHS = ("/metrics", "/")
GET_PATHS = ("/health", "/live", *METRICS_PATHS)  # what the metrics port answers


def serve_metrics_and_health(
    registry: CollectorRegistry, health: WorkerHealth, port: int, host: str = "127.0.0.1"
) -> ThreadingHTTPServer:
    """``/metrics`` (the registry), ``/health`` and ``/live`` from a daemon thread."""
    probes = {"/health": health.answer, "/live": health.live}  # JSON (status, body) answers

    class Handler(BaseHTTPRequestHandler):
        # A connection that sends nothing is closed after this: each holds a thread, and a
        # scraper that connects and stalls must not keep one for ever.
        timeout = IDLE_TIMEOUT_S

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            probe = probes.get(path)
            if probe is not None:
                status, body = probe(time.monotonic())
                self._send(status, "application/json", json.dumps(body).encode())
            elif path in METRICS_PATHS:
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, ctype: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are noise
            return None

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
