"""Nothing in ``router/`` reads a clock: every time it uses is passed in by its caller, so the
same decisions replay from recorded timestamps. ``router/__main__.py`` is the live server's
wiring and hands ``time.monotonic`` in; no other module may read one.

Checked on the syntax tree, not by pattern: an aliased import (``import time as t``), a loop's
clock reached any way (``self._loop.time``, ``get_running_loop().time()``) and ``os``'s clocks
are all found."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROUTER = Path(__file__).resolve().parents[2] / "router"
CLOCK_MODULES = {"time", "datetime"}
CLOCK_ATTRIBUTES = {
    "time",
    "time_ns",
    "monotonic",
    "monotonic_ns",
    "perf_counter",
    "perf_counter_ns",
    "process_time",
    "process_time_ns",
    "clock_gettime",
    "clock_gettime_ns",
    "now",
    "utcnow",
    "today",
}


def clock_reads(source: str) -> list[str]:
    """Each place in ``source`` that imports a clock module or touches a clock attribute."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        elif isinstance(node, ast.Attribute):
            if node.attr in CLOCK_ATTRIBUTES:
                found.append(f"{node.lineno}: .{node.attr}")
            continue
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            dynamic = node.func.id in ("__import__", "import_module")
            if dynamic and any(
                isinstance(a, ast.Constant) and a.value in CLOCK_MODULES for a in node.args
            ):
                found.append(f"{node.lineno}: {node.func.id}")
            continue
        else:
            continue
        found += [f"{node.lineno}: import {n}" for n in names if n in CLOCK_MODULES]
    return found


def test_no_router_module_reads_a_clock() -> None:
    paths = sorted(p for p in ROUTER.rglob("*.py") if p != ROUTER / "__main__.py")
    assert len(paths) > 10  # the check sees the package
    found = [f"{p.relative_to(ROUTER)}:{hit}" for p in paths for hit in clock_reads(p.read_text())]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "import time\n",
        "import time as t\n",
        "from time import monotonic as clock\n",
        "from datetime import datetime\n",
        "import os\nnow = os.clock_gettime(os.CLOCK_MONOTONIC)\n",
        "asked = self._loop.time() + interval_s\n",
        "asked = asyncio.get_running_loop().time()\n",
        "clock = loop.time\n",
        "m = __import__('time')\n",
        "m = import_module('datetime')\n",
    ],
)
def test_the_check_catches_a_clock_read(source: str) -> None:
    assert clock_reads(source)


def test_the_check_lets_a_passed_in_clock_through() -> None:
    source = (
        "def decide(now: float, clock: Callable[[], float]) -> float:\n    return clock() - now\n"
    )
    assert clock_reads(source) == []
    assert clock_reads((ROUTER / "__main__.py").read_text())  # the wiring does read one
