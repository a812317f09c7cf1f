"""Processor-side reliability pieces without a stack: lost trace records in the metrics,
routable against expected workers, /health, the bounded wait for a worker."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import pytest

from processor.health import STALL_S, WorkerHealth, serve_metrics_and_health, wait_for_routable
from processor.metrics import ProcessorMetrics
from router.unavailable import Unavailable, parse_unavailable


def _dropped(m: ProcessorMetrics) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for fam in m.registry.collect()
        if fam.name == "akr_processor_trace_records_dropped"
        for s in fam.samples
        if s.name.endswith("_total")
    }


def _serve(health: WorkerHealth) -> tuple[ThreadingHTTPServer, int]:
    """The metrics and health server on a free loopback port: (server, port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return serve_metrics_and_health(ProcessorMetrics().registry, health, port), port


def test_trace_losses_are_exported_by_reason_from_zero() -> None:
    m = ProcessorMetrics()
    assert set(_dropped(m)) >= {"queue_full", "unwritable", "disk_full"}
    assert not any(_dropped(m).values())
    m.sync_trace_lost({"unwritable": 3, "queue_full": 0})
    m.sync_trace_lost({"unwritable": 5, "queue_full": 1})
    assert _dropped(m)["unwritable"] == 5 and _dropped(m)["queue_full"] == 1


def test_health_states_follow_routable_against_expected() -> None:
    h = WorkerHealth(expected=None, window_s=60.0)
    assert h.answer(0.0)[0] == 503  # before the first sweep
    h.update(2, now=0.0)
    assert h.answer(0.5) == (
        200,
        {"status": "ready", "routable_workers": 2, "expected_workers": 2},
    )
    assert h.update(1, now=1.0) == 2  # a worker lost: expected stays at the recent peak
    assert h.answer(1.5) == (
        200,
        {"status": "degraded", "routable_workers": 1, "expected_workers": 2},
    )
    h.update(0, now=2.0)
    assert h.answer(2.5) == (
        503,
        {"status": "no_workers", "routable_workers": 0, "expected_workers": 2},
    )
    assert h.update(1, now=70.0) == 1  # past the window the smaller fleet is the norm
    assert h.answer(70.0)[1]["status"] == "ready"
    status, body = h.answer(70.0 + STALL_S + 1)  # the sweep stopped: the loop is stuck
    assert status == 503 and body["status"] == "stalled"


def test_fixed_expected_workers() -> None:
    h = WorkerHealth(expected=3, window_s=60.0)
    assert h.update(2, now=0.0) == 3
    assert h.answer(0.0)[1]["status"] == "degraded"
    h.update(3, now=1.0)
    assert h.answer(1.0)[1]["status"] == "ready"


async def test_no_worker_fails_fast_with_unavailable() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(Unavailable) as err:
        await wait_for_routable(lambda: [], set(), 0.2, 7, loop.time)
    assert 0.2 <= loop.time() - t0 < 1.0
    assert parse_unavailable(str(err.value)) == ("no_worker", 7)
    # all live workers excluded (they failed this request) counts as none
    with pytest.raises(Unavailable):
        await wait_for_routable(lambda: [5], {5}, 0.0, 7, loop.time)


async def test_a_worker_that_appears_within_the_wait_is_used() -> None:
    loop = asyncio.get_running_loop()
    ids: list[int] = []
    loop.call_later(0.1, ids.append, 9)
    assert await wait_for_routable(lambda: ids, set(), 5.0, 1, loop.time) == {9}
    assert await wait_for_routable(lambda: [1, 2], {2}, 0.0, 1, loop.time) == {1}


def test_health_endpoint_serves_metrics_and_health() -> None:
    h = WorkerHealth(expected=None, window_s=60.0)
    h.update(1, now=time.monotonic())
    server, port = _serve(h)
    try:
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["status"] == "ready"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
            assert b"akr_processor_expected_workers" in resp.read()
        h.update(0, now=time.monotonic())
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/health", timeout=5)
        assert err.value.code == 503
        assert json.loads(err.value.read())["status"] == "no_workers"
    finally:
        server.shutdown()
        server.server_close()


def test_liveness_follows_the_event_loop_ticks_not_the_workers() -> None:
    """/live is for restarting a stuck processor: alive before any worker was seen and with
    none routable, stalled only when the loop has not ticked for STALL_S."""
    h = WorkerHealth(expected=None, window_s=60.0)
    assert h.live(100.0) == (200, {"status": "alive"})  # just started, no tick yet
    h.beat(100.0)
    assert h.answer(100.0)[1]["status"] == "starting"
    assert h.live(100.0 + STALL_S) == (200, {"status": "alive"})
    h.update(0, now=100.0)
    assert h.live(100.0)[0] == 200  # no worker: not ready, still alive
    assert h.live(100.0 + STALL_S + 1.0) == (503, {"status": "stalled", "last_tick_s_ago": 11.0})


def test_the_metrics_port_answers_live() -> None:
    h = WorkerHealth(expected=None, window_s=60.0)
    server, port = _serve(h)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=5) as resp:
            assert (resp.status, json.loads(resp.read())) == (200, {"status": "alive"})
        h.beat(time.monotonic() - STALL_S - 1.0)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=5)
        assert err.value.code == 503
    finally:
        server.shutdown()
        server.server_close()


def test_a_second_loss_stays_degraded_for_its_whole_window() -> None:
    """Expected = the most workers routable at once within the window. A worker lost at 10 s
    and another at 500 s: at 611 s the first loss has aged out, but 3 were routable 112 s ago,
    so 2 routable is still degraded until 1100 s, not ready."""
    h = WorkerHealth(expected=None, window_s=600.0)
    for t, routable in ((0.0, 4), (9.0, 4), (10.0, 3), (499.0, 3), (500.0, 2)):
        h.update(routable, now=t)
    assert h.update(2, now=611.0) == 3
    assert h.answer(611.0)[1]["status"] == "degraded"
    assert h.update(2, now=1099.0) == 3
    assert h.update(2, now=1101.0) == 2
    assert h.answer(1101.0)[1]["status"] == "ready"
    assert h.update(5, now=1102.0) == 5  # a larger fleet is expected at once


def test_an_idle_connection_to_the_health_server_is_closed(monkeypatch) -> None:
    """Each connection holds a thread: one that sends nothing is closed after the idle
    timeout (it held its thread for ever)."""
    import processor.health as health_module

    monkeypatch.setattr(health_module, "IDLE_TIMEOUT_S", 0.2)
    h = WorkerHealth(expected=None, window_s=60.0)
    server, port = _serve(h)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            assert idle.recv(1) == b""  # closed by the server, not by our 5 s timeout
    finally:
        server.shutdown()
        server.server_close()


def test_health_names_the_model_and_its_prompt_limit_once_known() -> None:
    """What the gateway checks prompts against (frontend/health.py): absent until a card
    states a limit, then the latest one the sweep gave."""
    h = WorkerHealth(expected=None, window_s=60.0, model="m")
    h.update(1, 0.0)
    assert h.answer(0.0)[1] == {
        "status": "ready",
        "routable_workers": 1,
        "expected_workers": 1,
        "model": "m",
    }
    h.update(1, 1.0, prompt_limit=4096)
    h.update(2, 2.0, prompt_limit=16384)
    status, body = h.answer(2.0)
    assert status == 200 and body["prompt_limit"] == 16384 and body["model"] == "m"
