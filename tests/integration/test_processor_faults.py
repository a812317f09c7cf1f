"""Faults on the real stack: client disconnects, killed and frozen worker processes.

Workers run with ``--max-num-seqs 1``: a mocker then runs one sequence at a time, so a worker
that kept generating for a vanished client would visibly hold up the next request, and
concurrent requests queue on a worker without having started to stream.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from deploy.local_stack import LocalStack, StackConfig
from tests.integration.processor_util import (
    chat,
    metric,
    poll,
    records,
    running_stack,
    scrape,
    timed_while_frozen,
    trace_of,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def slow_stack() -> Iterator[LocalStack]:
    """One slow worker (speed 0.2: ~30 ms per output token) that runs one sequence at a time."""
    config = StackConfig(
        workers=1, speedup=0.2, gpu_blocks=1024, mocker_args=["--max-num-seqs", "1"]
    )
    with running_stack(config) as running:
        yield running


def _stream_then_hang_up(stack: LocalStack, chunks: int, max_tokens: int) -> str:
    body = {
        "model": stack.model_name,
        "messages": [{"role": "user", "content": "write a very long report " * 10}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    got, rid = 0, ""
    with httpx.stream(
        "POST", f"{stack.gateway_url}/v1/chat/completions", json=body, timeout=30
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                rid = rid or json.loads(line[6:])["id"].split("-", 1)[1]
                got += 1
                if got == chunks:
                    break  # leaving the with-block closes the connection
    return rid


def test_busy_worker_delays_the_next_request(slow_stack: LocalStack) -> None:
    """Control for the next test: with one sequence slot, a request waits for the running one."""
    done = threading.Event()

    def long_request() -> None:
        chat(slow_stack.gateway_url, slow_stack.model_name, "long answer please", max_tokens=60)
        done.set()

    runner = threading.Thread(target=long_request)
    runner.start()
    poll(
        "the long request in flight",
        lambda: (
            metric(scrape(slow_stack.processor_metrics_url), "akr_processor_active_requests") >= 1
        ),
        10,
    )
    time.sleep(0.3)  # let it reach the worker and start decoding
    rid, _ = chat(slow_stack.gateway_url, slow_stack.model_name, "quick one", max_tokens=2)
    runner.join(30)
    assert done.is_set()
    waited = trace_of(slow_stack, rid).ttft_ms
    assert waited > 700  # waited for ~60 tokens x 30 ms
    print(f"\ncontrol: TTFT behind a running 60-token request {waited:.0f} ms")


def test_disconnect_stops_the_worker(slow_stack: LocalStack) -> None:
    url = slow_stack.processor_metrics_url
    before = scrape(url)
    t0 = time.monotonic()
    rid = _stream_then_hang_up(slow_stack, chunks=5, max_tokens=3000)  # ~90 s if it ran on
    assert rid

    # The processor saw the cancellation: record, outcome, gauge.
    rec = trace_of(slow_stack, rid)
    assert rec.finish_reason == "cancelled" and rec.error == "client disconnected"
    assert 4 <= rec.output_tokens < 100, rec.output_tokens  # far below max_tokens=3000
    poll(
        "active requests back to 0",
        lambda: metric(scrape(url), "akr_processor_active_requests") == 0,
        10,
    )
    after = scrape(url)
    assert (
        metric(after, "akr_processor_requests_total", outcome="cancelled")
        - metric(before, "akr_processor_requests_total", outcome="cancelled")
        == 1
    )
    assert metric(after, "akr_processor_requests_total", outcome="ok") == metric(
        before, "akr_processor_requests_total", outcome="ok"
    )

    # The worker itself got the cancellation for this very request...
    poll(
        "the mocker's cancellation log line",
        lambda: any(
            "cancellation received" in line and rid in line
            for line in (slow_stack.workdir / "mocker0.log")
            .read_text(errors="replace")
            .splitlines()
        ),
        10,
    )
    # ...and is free again: with one sequence slot, a worker still decoding 3000 tokens would
    # make this request wait ~90 s (see the control test above).
    rid2, usage = chat(slow_stack.gateway_url, slow_stack.model_name, "are you free?", max_tokens=2)
    follow = trace_of(slow_stack, rid2)
    assert usage["completion_tokens"] == 2
    assert follow.ttft_ms < 500, follow.ttft_ms
    assert time.monotonic() - t0 < 15
    print(
        f"\ndisconnect: {rec.output_tokens}/3000 tokens, finish {rec.finish_reason}; "
        f"follow-up TTFT {follow.ttft_ms:.0f} ms"
    )


@pytest.fixture(scope="module")
def two_workers() -> Iterator[LocalStack]:
    """Two mocker processes of different speeds: ``mocker0`` (1.0) and ``mocker1`` (1.5)."""
    config = StackConfig(
        speeds=[1.0, 1.5],
        gpu_blocks=1024,
        mocker_args=["--max-num-seqs", "1"],
        supervise=False,  # the killed worker stays dead (restarts: tests/integration/test_chaos)
        keep_workdir=False,
    )
    with running_stack(config) as running:
        yield running


def test_killed_worker_loses_no_request(two_workers: LocalStack) -> None:
    stack = two_workers
    url = stack.processor_metrics_url
    before = poll(
        "both workers routable",
        lambda: (m := scrape(url)) and metric(m, "akr_processor_workers") == 2 and m,
        15,
    )
    n, tokens = 16, 80  # ~0.5 s of decode each; 8 queue up on each worker
    results: dict[int, dict] = {}
    live: dict[int, dict] = {}  # each client's progress while it streams

    def client(i: int) -> None:
        body = {
            "model": stack.model_name,
            "messages": [{"role": "user", "content": f"request {i}: " + "context " * 40}],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        out: dict = {"rid": "", "first": None, "tokens": 0, "finish": None, "error": None}
        out["chunks"] = 0
        live[i] = out
        try:
            with httpx.stream(
                "POST", f"{stack.gateway_url}/v1/chat/completions", json=body, timeout=60
            ) as resp:
                if resp.status_code != 200:
                    out["error"] = f"HTTP {resp.status_code}"
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk or "id" not in chunk:
                        out["error"] = chunk
                        continue
                    out["rid"] = out["rid"] or chunk["id"].split("-", 1)[1]
                    out["first"] = out["first"] or time.monotonic()
                    out["chunks"] += 1
                    for choice in chunk.get("choices") or []:
                        out["finish"] = choice.get("finish_reason") or out["finish"]
                    if chunk.get("usage"):
                        out["tokens"] = chunk["usage"]["completion_tokens"]
        except httpx.HTTPError as exc:
            out["error"] = repr(exc)
        results[i] = out

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    # Kill once half the requests are in the processor (all but 2 queue on the one-slot workers).
    poll(
        "half the requests in flight",
        lambda: metric(scrape(url), "akr_processor_active_requests") >= n // 2,
        20,
    )

    def both_workers_mid_answer() -> bool:
        """Two answers in their first half: with one slot per worker, one is on mocker1."""
        early = [r for r in list(live.values()) if r["first"] and r["chunks"] < tokens // 2]
        return len([r for r in early if r["finish"] is None]) >= 2

    poll("an answer streaming on each worker", both_workers_mid_answer, 20, 0.01)
    killed_at = time.monotonic()
    stack.kill("mocker1")
    # Dropped from routing within seconds (the requests keep running meanwhile).
    poll("the workers gauge to drop", lambda: metric(scrape(url), "akr_processor_workers") == 1, 15)
    dropped_after = time.monotonic() - killed_at
    # Still serving, but short of the two workers seen: readiness says degraded, the gauges
    # (and the AkrWorkersLost alert) say one lost.
    health = httpx.get(url.replace("/metrics", "/health"), timeout=5)
    stated = {"model": stack.model_name, "prompt_limit": 1024 * 64}  # 1024 blocks of KV each
    assert (health.status_code, health.json()) == (
        200,
        {"status": "degraded", "routable_workers": 1, "expected_workers": 2, **stated},
    )
    assert metric(scrape(url), "akr_processor_expected_workers") == 2
    for t in threads:
        t.join(60)
    assert len(results) == n

    # No request fails: one that had not started is retried, one that was streaming is
    # continued on the survivor (prompt + tokens sent), and its client sees one full answer.
    failed = [r for r in results.values() if r["error"] is not None or r["tokens"] != tokens]
    assert not failed, [(r["tokens"], r["finish"], r["error"]) for r in failed]
    assert all(r["finish"] == "length" for r in results.values())
    streaming = [r for r in results.values() if r["first"] is not None and r["first"] <= killed_at]
    not_started = [r for r in results.values() if r not in streaming]
    assert len(not_started) >= n // 4  # queued at the kill
    migrated = [rec for r in streaming if (rec := trace_of(stack, r["rid"])).migrations]
    assert migrated, "the answer streaming on the killed worker was not continued"
    assert all(rec.error is None and rec.output_tokens == tokens for rec in migrated)
    after = scrape(url)
    retries = metric(after, "akr_processor_retries_total") - metric(
        before, "akr_processor_retries_total"
    )
    assert retries >= 1
    dead = {
        int(dict(lbl)["worker"], 16)
        for (name, lbl), v in after.items()
        if name == "akr_processor_worker_errors_total" and v
    }
    assert len(dead) == 1
    retried = [trace_of(stack, r["rid"]) for r in not_started]
    assert sum(rec.retries for rec in retried) >= 1
    assert all(rec.worker_id not in dead for rec in retried)
    migrations = metric(after, "akr_processor_migrations_total") - metric(
        before, "akr_processor_migrations_total"
    )
    assert migrations == sum(rec.migrations for rec in migrated) >= 1
    assert all(rec.worker_id not in dead for rec in migrated)

    # Later requests all go to the survivor, without a failed attempt first.
    assert dropped_after < 15
    later = [chat(stack.gateway_url, stack.model_name, f"after the kill {i}")[0] for i in range(6)]
    later_recs = [trace_of(stack, rid) for rid in later]
    assert {rec.worker_id for rec in later_recs}.isdisjoint(dead)
    assert len({rec.worker_id for rec in later_recs}) == 1
    assert all(rec.retries == 0 for rec in later_recs)
    assert len(records(stack)) >= n + 6
    print(
        f"\nkill: {n} requests, 0 failed; {len(not_started)} without a token at the kill, "
        f"{len(streaming)} streaming, {len(migrated)} continued elsewhere "
        f"({migrations:g} migrations); retries {retries:g}; worker gauge 2->1 after "
        f"{dropped_after:.1f} s; 6 later requests on the survivor, 0 retries"
    )


def test_frozen_worker_times_out_before_the_first_token_and_is_retried() -> None:
    """A worker process stopped with SIGSTOP (alive to discovery, silent) makes the requests
    sent to it time out after ``first_token_timeout_s`` (1.5 s here; the deadline covers the
    request send too, else Dynamo's own 5 s request timeout would apply); each is retried on
    the other worker and succeeds, and the frozen worker is blamed."""
    timeout_s = 1.5
    config = StackConfig(
        speeds=[1.0, 1.5],
        gpu_blocks=1024,
        # The learner off: its exploration may send all four to one worker; the load term
        # alone spreads concurrent requests over both, so some reach the frozen one.
        processor_env={
            "AKR_PROCESSOR_FIRST_TOKEN_TIMEOUT_S": str(timeout_s),
            "AKR_ROUTER_BANDIT_ENABLED": "false",
        },
    )
    with running_stack(config) as stack:
        url = stack.processor_metrics_url
        poll("both workers routable", lambda: metric(scrape(url), "akr_processor_workers") == 2, 15)

        got = timed_while_frozen(
            stack,
            "mocker1",
            lambda i: chat(
                stack.gateway_url,
                stack.model_name,
                f"frozen test {i}: " + "ctx " * 30,
                max_tokens=4,
            )[0],
        )
        recs = [trace_of(stack, rid) for rid, _ in got]
        after = scrape(url)
        frozen = {
            int(dict(lbl)["worker"], 16)
            for (name, lbl), v in after.items()
            if name == "akr_processor_worker_errors_total" and v
        }
        retried = [(r, latency) for r, (_, latency) in zip(recs, got, strict=True) if r.retries]
        assert retried, [(r.worker_id, r.reason) for r in recs]  # some went to the frozen one
        assert len(frozen) == 1 and all(r.worker_id not in frozen for r in recs)
        assert all(r.error is None and r.output_tokens == 4 for r in recs)
        assert all(timeout_s <= latency < timeout_s + 2.0 for _, latency in retried), got
        assert metric(after, "akr_processor_retries_total") == len(retried)
        print(
            f"\nfrozen worker: {len(retried)}/4 requests timed out after {timeout_s} s and "
            f"were retried; client latencies {[round(x, 2) for _, x in got]} s"
        )


def test_worker_frozen_mid_stream_is_continued_elsewhere() -> None:
    """A worker stopped (SIGSTOP) while streaming: after ``stream_stall_timeout_s`` of silence
    its answers are continued on the other worker; every client gets its full answer."""
    stall_s = 1.0
    config = StackConfig(
        speeds=[0.5, 0.6],  # ~10 ms a token: 150 tokens stream for ~1.5 s
        gpu_blocks=1024,
        processor_env={"AKR_PROCESSOR_STREAM_STALL_TIMEOUT_S": str(stall_s)},
    )
    with running_stack(config) as stack:
        url = stack.processor_metrics_url
        poll("both workers routable", lambda: metric(scrape(url), "akr_processor_workers") == 2, 15)
        n, tokens = 6, 150
        streamed: dict[int, int] = {}
        results: dict[int, tuple[str, int, str | None]] = {}

        def client(i: int) -> None:
            body = {
                "model": stack.model_name,
                "messages": [{"role": "user", "content": f"frozen mid-stream {i} " * 20}],
                "max_tokens": tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            rid, got, error = "", 0, None
            with httpx.stream(
                "POST", f"{stack.gateway_url}/v1/chat/completions", json=body, timeout=60
            ) as resp:
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        error = str(chunk)
                        continue
                    rid = rid or chunk["id"].split("-", 1)[1]
                    streamed[i] = streamed.get(i, 0) + 1
                    if chunk.get("usage"):
                        got = chunk["usage"]["completion_tokens"]
            results[i] = (rid, got, error)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        poll("every answer streaming", lambda: len(streamed) == n, 20)
        stack.signal("mocker1", signal.SIGSTOP)
        try:
            for t in threads:
                t.join(60)
        finally:
            stack.signal("mocker1", signal.SIGCONT)
        assert len(results) == n
        assert all(err is None and got == tokens for _, got, err in results.values()), results
        recs = [trace_of(stack, rid) for rid, _, _ in results.values()]
        migrated = [r for r in recs if r.migrations]
        assert migrated, "no answer was on the frozen worker"
        assert all(r.error is None and r.output_tokens == tokens for r in migrated)
        print(
            f"\nfrozen mid-stream: {len(migrated)}/{n} answers continued after {stall_s} s of "
            f"silence, all {n} complete"
        )
