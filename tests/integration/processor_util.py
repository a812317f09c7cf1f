"""Helpers of the processor integration tests: requests with hints, metric scrapes, traces, and
probes that talk to a stack's workers from a Dynamo runtime of their own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from deploy.local_stack import REPO_ROOT, LocalStack, StackConfig, StackError, loopback_env
from processor.traces import TraceRecord, read_records
from tests.conftest import pids_alive


def chat(
    base: str,
    model: str,
    content: str,
    *,
    max_tokens: int = 4,
    nvext: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    stream: bool = False,
    timeout: float = 30.0,
) -> tuple[str, dict[str, Any]]:
    """One chat completion; returns (request id as the processor sees it, usage)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if nvext is not None:
        body["nvext"] = nvext
    if not stream:
        resp = httpx.post(
            f"{base}/v1/chat/completions", json=body, headers=headers, timeout=timeout
        )
        assert resp.status_code == 200, resp.text
        data = resp.json()
        return _rid(data["id"]), data["usage"]
    body["stream_options"] = {"include_usage": True}
    rid, usage = "", {}
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", json=body, headers=headers, timeout=timeout
    ) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            rid = rid or _rid(chunk.get("id", ""))
            usage = chunk.get("usage") or usage
    return rid, usage


def _rid(response_id: str) -> str:
    """``chatcmpl-<id>`` -> ``<id>``: the stock frontend's request id, the processor's trace id."""
    return response_id.split("-", 1)[1] if response_id.startswith("chatcmpl-") else response_id


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus endpoint keyed by (name, sorted labels)."""
    text = httpx.get(url, timeout=10).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(samples: dict, name: str, **labels: str) -> float:
    """One sample (0 if absent); with no labels given, the sum over all label sets."""
    if labels:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)
    return sum(v for (n, _), v in samples.items() if n == name)


def poll(what: str, probe: Callable[[], Any], timeout_s: float, interval_s: float = 0.05) -> Any:
    """Call ``probe`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def per_worker(samples: dict, name: str) -> dict[str, float]:
    """A per-worker metric's samples keyed by the ``worker`` label."""
    return {dict(labels)["worker"]: v for (n, labels), v in samples.items() if n == name}


def engine_reports(
    url: str, prefix: str, workers: int, timeout_s: float = 15.0
) -> tuple[dict[str, float], dict[str, float]]:
    """``<prefix>_worker_capacity_blocks`` and ``<prefix>_engine_waiting_requests`` per worker,
    once all ``workers`` report their capacity (read over the event plane, so it lags)."""

    def reported() -> dict | None:
        now = scrape(url)
        return now if len(per_worker(now, f"{prefix}_worker_capacity_blocks")) == workers else None

    samples = poll(f"capacity of {workers} workers in {url}", reported, timeout_s)
    return (
        per_worker(samples, f"{prefix}_worker_capacity_blocks"),
        per_worker(samples, f"{prefix}_engine_waiting_requests"),
    )


def timed_while_frozen(
    stack: LocalStack, process: str, send: Callable[[int], Any], requests: int = 4
) -> list[tuple[Any, float]]:
    """``send(i)`` for ``requests`` concurrent requests while ``process`` is frozen (SIGSTOP,
    resumed after): each result with its client latency in seconds. Concurrent, so the load
    term spreads them and some land on the frozen worker."""

    def timed(i: int) -> tuple[Any, float]:
        t = time.monotonic()
        out = send(i)
        return out, time.monotonic() - t

    stack.signal(process, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(requests) as pool:
            return list(pool.map(timed, range(requests)))
    finally:
        stack.signal(process, signal.SIGCONT)


def records(stack: LocalStack) -> list[TraceRecord]:
    return list(read_records(stack.trace_path)) if stack.trace_path.exists() else []


def trace_of(stack: LocalStack, request_id: str, timeout_s: float = 15.0) -> TraceRecord:
    """The trace record of one request (the writer batches: poll)."""
    found = poll(
        f"trace record {request_id}",
        lambda: [r for r in records(stack) if r.request_id == request_id],
        timeout_s,
    )
    return found[-1]


@contextlib.contextmanager
def running_stack(
    config: StackConfig,
    attempts: int = 3,
    prepare: Callable[[LocalStack], None] | None = None,
) -> Iterator[LocalStack]:
    """``LocalStack(config)`` started, retried when a pre-picked port was taken meanwhile.

    The launcher picks free ports before it spawns the processes; on a busy box another
    process (often one of the stack's own Dynamo components binding port 0) can take one in
    between, and the component then dies with "Address already in use". ``prepare`` runs
    on each fresh ``LocalStack`` before it starts (e.g. to put a FIFO at its trace path).
    """
    for attempt in range(attempts):
        stack = LocalStack(config)
        if prepare is not None:
            prepare(stack)
        try:
            stack.start()
        except StackError as exc:
            stack.stop()
            if "Address already in use" in str(exc) and attempt + 1 < attempts:
                continue
            raise
        except BaseException:
            stack.stop()
            raise
        started = stack.pids()
        try:
            yield stack
        finally:
            stack.stop()
        assert pids_alive(started) == [], "the stack left processes behind"
        return


def run_probe(stack: LocalStack, module: str, *args: str, timeout_s: float = 300.0) -> Any:
    """``python -m module args`` in the stack's Dynamo environment (Dynamo's logs at warn): the
    last line it prints, as JSON. Fails with the tail of its stderr when it fails."""
    env = {**os.environ, **loopback_env(stack.file_kv), "DYN_LOG": "warn"}
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
