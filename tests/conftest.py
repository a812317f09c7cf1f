"""Shared fixtures: one real local stack per session for the tests that only read from it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from deploy.local_stack import LocalStack, StackConfig
from processor.traces import TraceRecord, poll_records


def pids_alive(pids: list[int]) -> list[int]:
    """The PIDs among ``pids`` that still exist (zombies of reaped children do not)."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


@pytest.fixture(scope="session", autouse=True)
def process_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Processes the tests start keep their temporary files (Dynamo writes a logging-config
    file per process it configures) in one directory of the session, removed at its end,
    instead of leaving them in the machine's /tmp run after run."""
    path = tmp_path_factory.mktemp("processes")
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(path)
    yield
    if before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """Gateway -> stock frontend -> processor -> 2 mocker workers, shared by read-only tests."""
    with LocalStack(StackConfig(workers=2, speedup=10.0, gpu_blocks=512)) as running:
        started = running.pids()
        yield running
    assert pids_alive(started) == [], "the session stack left processes behind"


def wait_for_trace(
    stack: LocalStack, match: Callable[[TraceRecord], bool], count: int = 1, timeout_s: float = 15.0
) -> list[TraceRecord]:
    """Poll the processor's trace until ``count`` records match (the writer batches)."""
    found = [
        r
        for r in poll_records(
            stack.trace_path, lambda recs: sum(map(match, recs)) >= count, timeout_s
        )
        if match(r)
    ]
    if len(found) < count:
        raise AssertionError(f"{len(found)} of {count} trace records after {timeout_s} s")
    return found
