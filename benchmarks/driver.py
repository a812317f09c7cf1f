"""Our own load driver: async httpx, one task per session, streaming, client-side timing.

Used for the workloads AIPerf cannot express (per-session NAT hints in ``nvext.agent_hints``
that change per request, tool-call gaps drawn per session and applied after each answer, the
session header of the affinity arm), and as the fallback for the Mooncake replay.

Timing, identical for every arm: TTFT = request sent -> first SSE chunk whose delta carries
non-empty content; E2E = request sent -> end of stream; ITL = (E2E - TTFT) / (output tokens -
1) per request (AIPerf's definition); output and prompt/cached tokens come from the streamed
usage (``stream_options.include_usage``). A request fails on a non-200 status, a transport
error, an ``error`` event in the stream, or a stream without usage.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import msgspec

from benchmarks.workloads import Session, Turn, Workload

STOCK_HINT_KEYS = ("osl", "latency_sensitivity", "priority")


@dataclass
class Record:
    workload: str
    arm: str
    repeat: int
    session: str
    klass: str
    turn: int
    t_send_s: float  # since the run started
    status: int
    ttft_ms: float | None
    e2e_ms: float | None
    itl_ms: float | None
    output_tokens: int
    prompt_tokens: int
    cached_tokens: int
    ideal_cached_tokens: int
    max_tokens: int
    error: str | None = None
    # The answer's id without "chatcmpl-": the request id in our processor's trace records.
    request_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def request_body(arm: str, model: str, turn: Turn) -> dict[str, Any]:
    """The body each arm gets: full NAT hints for ours, what the stock frontend accepts else."""
    body: dict[str, Any] = {
        "model": model,
        "messages": turn.messages,
        "max_tokens": turn.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    if turn.hints is not None:
        if arm.startswith("ours"):
            nvext: dict[str, Any] = {"agent_hints": dict(turn.hints)}
            if turn.cache_ttl:
                nvext["cache_control"] = {"type": "ephemeral", "ttl": turn.cache_ttl}
        else:
            # The stock frontend 400s on prefix_id/total_requests/iat and on cache_control.
            nvext = {"agent_hints": {k: turn.hints[k] for k in STOCK_HINT_KEYS if k in turn.hints}}
        body["nvext"] = nvext
    return body


class Driver:
    def __init__(
        self,
        url: str,
        model: str,
        arm: str,
        workload: Workload,
        repeat: int,
        session_header: bool,
        timeout_s: float = 180.0,
        body_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.url = f"{url}/v1/chat/completions"
        # Rewrites each body before sending (benchmarks.path_split: the gateway's translation
        # applied client-side, to reach the stock frontend without the gateway).
        self.body_transform = body_transform
        self.model = model
        self.arm = arm
        self.workload = workload
        self.repeat = repeat
        self.session_header = session_header
        self.timeout_s = timeout_s
        self.records: list[Record] = []
        self._decoder = msgspec.json.Decoder()
        self.t0 = 0.0

    async def run(self) -> float:
        """Drive every session; returns the wall time from the first send to the last answer."""
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            # One untimed request first, the same for every arm: a fresh client's first request
            # paid ~40 ms more (benchmarks/README.md, caveats), and the arm that runs first
            # would carry it.
            await client.get(self.url.removesuffix("/chat/completions") + "/models")
            self.t0 = time.perf_counter()
            await asyncio.gather(*(self._session(client, s) for s in self.workload.sessions))
        last = max((r.t_send_s + (r.e2e_ms or 0) / 1000 for r in self.records), default=0.0)
        first = min((r.t_send_s for r in self.records), default=0.0)
        return last - first

    async def _session(self, client: httpx.AsyncClient, session: Session) -> None:
        delay = self.t0 + session.start_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        headers = {}
        if self.session_header and session.send_session_header:
            headers["x-dynamo-session-id"] = session.session_id
        for i, turn in enumerate(session.turns):
            if i and turn.gap_s > 0:
                await asyncio.sleep(turn.gap_s)
            await self._request(client, session, i, turn, headers)

    async def _request(
        self,
        client: httpx.AsyncClient,
        session: Session,
        index: int,
        turn: Turn,
        headers: dict[str, str],
    ) -> None:
        body = request_body(self.arm, self.model, turn)
        if self.body_transform is not None:
            body = self.body_transform(body)
        payload = msgspec.json.encode(body)
        rec = Record(
            self.workload.name,
            self.arm,
            self.repeat,
            session.session_id,
            session.klass,
            index,
            0.0,
            0,
            None,
            None,
            None,
            0,
            0,
            0,
            turn.ideal_cached_tokens,
            turn.max_tokens,
        )
        t_send = time.perf_counter()
        rec.t_send_s = t_send - self.t0
        first: float | None = None
        usage: dict[str, Any] | None = None
        try:
            async with client.stream(
                "POST",
                self.url,
                content=payload,
                headers={"content-type": "application/json", **headers},
            ) as resp:
                rec.status = resp.status_code
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")
                    rec.error = f"http {resp.status_code}: {text[:300]}"
                else:
                    async for line in resp.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        if rec.request_id is None:
                            rec.request_id = _answer_id(data)
                        if first is None and '"content":"' in data and '"content":""' not in data:
                            first = time.perf_counter()
                        if '"usage"' in data or '"error"' in data:
                            event = self._decoder.decode(data)
                            if event.get("error"):
                                rec.error = f"stream error: {str(event['error'])[:300]}"
                            if event.get("usage"):
                                usage = event["usage"]
        except (httpx.HTTPError, OSError) as exc:
            rec.error = f"{type(exc).__name__}: {exc}"[:300]
        end = time.perf_counter()
        if rec.error is None and usage is None:
            rec.error = "stream ended without usage"
        if usage:
            rec.output_tokens = int(usage.get("completion_tokens") or 0)
            rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            rec.cached_tokens = int(details.get("cached_tokens") or 0)
        if rec.error is None:
            rec.e2e_ms = (end - t_send) * 1000
            rec.ttft_ms = ((first or end) - t_send) * 1000
            if rec.output_tokens > 1:
                rec.itl_ms = (rec.e2e_ms - rec.ttft_ms) / (rec.output_tokens - 1)
        self.records.append(rec)


def _answer_id(event: str) -> str | None:
    """``chatcmpl-<uuid>`` of an SSE event, without the prefix (no JSON decode)."""
    at = event.find('"id":"chatcmpl-')
    if at < 0:
        return None
    start = at + len('"id":"chatcmpl-')
    end = event.find('"', start)
    return event[start:end] if end > start else None


def records_as_dicts(records: list[Record]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]


class LoadSampler:
    """Samples the machine's load average and CPU busy fraction while a run is going."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.load1: list[float] = []
        self.busy: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._start: tuple[tuple[int, int], tuple[float, float, float]] | None = None

    @staticmethod
    def _cpu() -> tuple[int, int]:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
        idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
        return sum(parts), idle

    async def _loop(self) -> None:
        prev = self._cpu()
        while True:
            await asyncio.sleep(self.interval_s)
            cur = self._cpu()
            total, idle = cur[0] - prev[0], cur[1] - prev[1]
            prev = cur
            if total > 0:
                self.busy.append(1.0 - idle / total)
            self.load1.append(os.getloadavg()[0])

    def start(self) -> None:
        self._start = (self._cpu(), os.getloadavg())
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> dict[str, Any]:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if not self.load1:
            self.load1.append(os.getloadavg()[0])
        out: dict[str, Any] = {
            "load1_mean": round(sum(self.load1) / len(self.load1), 2),
            "load1_max": round(max(self.load1), 2),
            "cpu_busy_mean": round(sum(self.busy) / len(self.busy), 3) if self.busy else None,
            "cpu_busy_max": round(max(self.busy), 3) if self.busy else None,
        }
        if self._start is not None:
            # The whole arm at once: /proc/stat busy fraction from start to stop (all CPUs),
            # and the load averages (1, 5, 15 min) at both ends.
            (total0, idle0), load0 = self._start
            total1, idle1 = self._cpu()
            total = total1 - total0
            out["cpu_busy_arm"] = round(1.0 - (idle1 - idle0) / total, 3) if total > 0 else None
            out["loadavg_start"] = [round(x, 2) for x in load0]
            out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        return out


class WorkerCountPoller:
    """Per-worker request counts for the stock arms, from the frontend's /metrics.

    Dynamo 1.6.1's frontend exposes no per-worker request counter, only per-worker gauges of
    the LAST request (``dynamo_frontend_worker_last_time_to_first_token_seconds{worker_id}``,
    ``..._last_input_sequence_tokens``). Polling them and counting changes gives requests per
    worker; two requests finishing their prefill on one worker within one poll interval count
    once, so the counts are a lower bound (the coverage, counted / requests, is reported).
    """

    PREFIXES = (
        "dynamo_frontend_worker_last_time_to_first_token_seconds{",
        "dynamo_frontend_worker_last_input_sequence_tokens{",
    )

    def __init__(self, metrics_url: str, interval_s: float = 0.05) -> None:
        self.metrics_url = metrics_url
        self.interval_s = interval_s
        self.counts: dict[str, int] = {}
        self._last: dict[str, tuple[str, ...]] = {}
        self._task: asyncio.Task[None] | None = None

    def _parse(self, text: str) -> dict[str, tuple[str, ...]]:
        values: dict[str, list[str]] = {}
        for line in text.splitlines():
            if line.startswith(self.PREFIXES):
                labels, _, value = line.rpartition(" ")
                i = labels.find('worker_id="')
                if i < 0:
                    continue
                wid = labels[i + 11 : labels.find('"', i + 11)]
                values.setdefault(wid, []).append(value)
        return {k: tuple(v) for k, v in values.items()}

    async def _loop(self) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    resp = await client.get(self.metrics_url)
                    cur = self._parse(resp.text)
                    for wid, vals in cur.items():
                        if wid in self._last and self._last[wid] != vals:
                            self.counts[wid] = self.counts.get(wid, 0) + 1
                        elif wid not in self._last and self._baseline_done:
                            self.counts[wid] = self.counts.get(wid, 0) + 1
                        self.counts.setdefault(wid, 0)
                    self._last = cur
                    self._baseline_done = True
                except (httpx.HTTPError, OSError):
                    pass
                await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._baseline_done = False
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> dict[str, int]:
        if self._task:
            await asyncio.sleep(self.interval_s * 2)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        return dict(self.counts)
