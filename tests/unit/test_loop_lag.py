"""The loop-lag watcher reports how long ready work waited for a blocked loop."""

from __future__ import annotations

import asyncio
import time

from router.loop_lag import LOOP_LAG_BUCKETS, watch_loop_lag


def test_lag_is_near_zero_on_an_idle_loop_and_shows_a_blocked_one() -> None:
    async def run() -> list[float]:
        seen: list[float] = []
        arrived = asyncio.Event()

        def observe(lag: float) -> None:
            seen.append(lag)
            arrived.set()

        async def next_sample() -> None:
            arrived.clear()
            await arrived.wait()

        loop = asyncio.get_running_loop()
        task = asyncio.create_task(watch_loop_lag(observe, loop.time, interval_s=0.01))
        for _ in range(3):
            await next_sample()
        idle = len(seen)
        time.sleep(0.08)  # noqa: ASYNC251 - hogs the loop on purpose, as a blocking call would
        await next_sample()
        task.cancel()
        return [*seen[:idle], seen[idle]]

    seen = asyncio.run(run())
    *idle, blocked = seen
    assert all(0.0 <= lag < 0.05 for lag in idle)
    assert 0.05 <= blocked < 1.0  # ~70 ms late: the 80 ms hog minus what was left of the sleep


def test_buckets_are_increasing_and_span_sub_ms_to_one_second() -> None:
    assert list(LOOP_LAG_BUCKETS) == sorted(set(LOOP_LAG_BUCKETS))
    assert LOOP_LAG_BUCKETS[0] <= 0.0001 and LOOP_LAG_BUCKETS[-1] >= 1.0
