"""The streaming-relay benchmark measures what it says: every chunk of every stream, both
targets."""

from __future__ import annotations

import argparse

from benchmarks.gateway_stream import run


def test_small_run_counts_every_chunk() -> None:
    args = argparse.Namespace(
        streams=8, concurrency=2, chunks=3, gap_ms=1.0, rounds=2, gateway_src=None
    )
    res = run(args)
    assert res["chunks_per_stream"] == 3
    assert res["direct"]["streams"] == res["gateway"]["streams"] == 8
    assert 0 <= res["gateway_cpu_us_per_stream"] < 1e6  # /proc ticks: 0 for so short a run
    assert res["gateway"]["first_chunk_p50_ms"] > 0 and res["direct"]["first_chunk_p50_ms"] > 0
