"""The shared Mooncake trace for the replay tests: a missing one fails them saying where it
belongs and where it comes from (it is not part of the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.replay.trace import mooncake_trace


@pytest.fixture(scope="session")
def mooncake_path() -> Path:
    try:
        return mooncake_trace()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
