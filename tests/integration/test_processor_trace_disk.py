"""A slow or full trace disk never slows requests down.

The processor's trace path is a FIFO that nobody reads: opening it for writing blocks (in
the trace writer's thread) for as long as no reader appears, i.e. the "disk" accepts nothing.
With a trace queue of 2 records, records are dropped and counted while requests keep their
normal latency, measured against an identical stack with a normal trace file, requests
interleaved so both see the same machine load.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from deploy.local_stack import LocalStack, StackConfig
from tests.integration.processor_util import chat, metric, poll, running_stack, scrape

pytestmark = pytest.mark.integration

ENV = {"AKR_PROCESSOR_TRACE_QUEUE_SIZE": "2"}
N = 30


def _fifo_at_trace_path(stack: LocalStack) -> None:
    stack.trace_path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(stack.trace_path)


def _drain(path: os.PathLike[str]) -> None:
    """Become the FIFO's reader, so the blocked writer can finish and the processor can exit."""
    with open(path, "rb") as fifo:
        while fifo.read(65536):
            pass


@pytest.fixture(scope="module")
def stacks() -> Iterator[tuple[LocalStack, LocalStack]]:
    normal_cfg = StackConfig(workers=1, speedup=10.0, processor_env=ENV)
    stuck_cfg = StackConfig(workers=1, speedup=10.0, processor_env=ENV)
    with (
        running_stack(normal_cfg) as normal,
        running_stack(stuck_cfg, prepare=_fifo_at_trace_path) as stuck,
    ):
        yield normal, stuck
        threading.Thread(target=_drain, args=(stuck.trace_path,), daemon=True).start()


def _timed(stack: LocalStack, i: int) -> float:
    t0 = time.perf_counter()
    _, usage = chat(stack.gateway_url, stack.model_name, f"tool call {i}", max_tokens=4)
    assert usage["completion_tokens"] == 4
    return time.perf_counter() - t0


def test_stuck_trace_disk_does_not_slow_requests(stacks: tuple[LocalStack, LocalStack]) -> None:
    normal, stuck = stacks
    for stack in (normal, stuck):  # warm both paths up
        _timed(stack, -1)
    lat_normal, lat_stuck = [], []
    for i in range(N):
        lat_normal.append(_timed(normal, i))
        lat_stuck.append(_timed(stuck, i))

    p50_n, p50_s = statistics.median(lat_normal), statistics.median(lat_stuck)
    p90_n = statistics.quantiles(lat_normal, n=10)[-1]
    p90_s = statistics.quantiles(lat_stuck, n=10)[-1]
    print(
        f"\ntrace disk stuck: p50 {p50_s * 1000:.1f} ms vs normal {p50_n * 1000:.1f} ms; "
        f"p90 {p90_s * 1000:.1f} vs {p90_n * 1000:.1f} ms"
    )
    assert p50_s <= 1.5 * p50_n + 0.010
    assert p90_s <= 2.0 * p90_n + 0.050
    assert max(lat_stuck) < 2.0

    # Records were dropped, not queued without bound; the normal stack dropped none.
    url = stuck.processor_metrics_url
    dropped = poll(
        "dropped trace records in the metrics",
        lambda: (
            (d := metric(scrape(url), "akr_processor_trace_records_dropped_total")) >= N - 3 and d
        ),
        5,
    )  # all but the queue of 2 and the record the blocked writer holds
    assert metric(scrape(url), "akr_processor_requests_total", outcome="ok") >= N
    normal_dropped = metric(
        scrape(normal.processor_metrics_url), "akr_processor_trace_records_dropped_total"
    )
    assert normal_dropped == 0
    print(f"dropped {dropped:g} of {N + 2} trace records")
