"""Nothing in ``router/`` reads a clock: every time it uses is passed in by its caller, so the
same decisions replay from recorded timestamps. ``router/__main__.py`` is the live server's
wiring and hands ``time.monotonic`` in; no other module may read one."""

from __future__ import annotations

import re
from pathlib import Path

ROUTER = Path(__file__).resolve().parents[2] / "router"
CLOCK_READ = re.compile(
    r"\btime\.(monotonic|time|perf_counter|process_time)(_ns)?\(|\bloop\.time\(|\bdatetime\."
    r"|\bfrom time import\b"
)


def test_no_router_module_reads_a_clock() -> None:
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted(ROUTER.glob("*.py"))
        if path.name != "__main__.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if CLOCK_READ.search(line)
    ]
    assert found == []


def test_the_pattern_catches_a_clock_read() -> None:
    assert CLOCK_READ.search("started = time.monotonic()")
    assert CLOCK_READ.search("asked = loop.time() + interval_s")
    assert not CLOCK_READ.search("now: float  # monotonic seconds")
