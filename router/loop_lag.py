"""Event-loop lag: how late a timer fires on this component's loop.

Why: a Python component on the request path adds latency that CPU usage does not show. A
callback that is ready (a token from a worker, a new request) waits until the loop is free;
the lag of a periodic timer samples exactly that wait. One sample per ``interval_s``,
O(1) work, no allocation beyond the sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# Seconds. uvloop's timers have millisecond resolution, so lag shows in steps of ~1 ms; the
# sub-millisecond buckets still separate an idle loop (0) from one that is never free.
LOOP_LAG_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


async def watch_loop_lag(
    observe: Callable[[float], None], clock: Callable[[], float], interval_s: float = 0.05
) -> None:
    """Forever: sleep ``interval_s`` and hand how much later than asked it woke to ``observe``.

    ``clock`` is the loop's own clock (``loop.time``), passed in by the caller.
    """
    while True:
        asked = clock() + interval_s
        await asyncio.sleep(interval_s)
        observe(max(0.0, clock() - asked))
