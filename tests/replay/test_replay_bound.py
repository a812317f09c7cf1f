"""The replay bound on a hand-made trace: what each figure takes off kv's TTFT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.replay.arms import TraceFile
from benchmarks.replay.bound import request_bounds, summarize_bounds
from benchmarks.replay.cluster import ClusterConfig
from benchmarks.replay.engine import least_prefill_ms, prefill_ms, solo_prefill_ms
from benchmarks.replay.records import RequestRecord
from benchmarks.replay.trace import TraceRequest

BS = 64


def _trace() -> TraceFile:
    blocks = [(1, 2, 3, 4), (5, 6, 7, 8), (1, 2, 3, 4, 9)]
    reqs = [
        TraceRequest(i, i * 1000.0, len(b) * BS, 10, b, BS, session_id=f"s{i}")
        for i, b in enumerate(blocks)
    ]
    return TraceFile(Path("unused"), "agentic", reqs)


def _kv(trace: TraceFile, worker: int = 0) -> list[RequestRecord]:
    ttft = 500.0
    return [
        RequestRecord(
            index=t.index,
            request_id=str(t.index),
            worker=worker,
            arrival_ms=t.arrival_ms,
            first_token_ms=t.arrival_ms + ttft,
            finish_ms=t.arrival_ms + ttft + 50.0,
            input_length=t.input_length,
            output_length=t.output_length,
            reused_tokens=0,  # kv missed everything
            ttft_ms=ttft,
            e2e_ms=ttft + 50.0,
        )
        for t in trace.requests
    ]


def test_solo_prefill_is_one_pass_per_chunk() -> None:
    assert solo_prefill_ms(100, 1.0, 8192) == pytest.approx(prefill_ms(1, 100))
    two = prefill_ms(1, 8192) + prefill_ms(1, 1808)
    assert solo_prefill_ms(10_000, 1.0, 8192) == pytest.approx(two)
    assert solo_prefill_ms(100, 2.0, 8192) == pytest.approx(prefill_ms(1, 100) / 2, rel=1e-6)


def test_a_returning_prompt_costs_only_what_the_caches_miss() -> None:
    trace = _trace()
    cluster = ClusterConfig(num_workers=2, num_gpu_blocks=4, block_size=BS)  # pool of 8
    b = request_bounds(cluster, trace, _kv(trace))
    solo = [solo_prefill_ms(n, 1.0, 8192) for n in (256, 256, 320, 64)]
    # Cold prompts: every bound computes the whole prompt; kv's queueing stays.
    assert b["floor_ideal"][:2] == pytest.approx(solo[:2])
    assert b["kv_pooled"][:2] == pytest.approx([500.0, 500.0])
    # The third reuses four blocks in both caches: only its fifth block is computed.
    assert b["floor_ideal"][2] == pytest.approx(solo[3])
    assert b["floor_pooled"][2] == pytest.approx(solo[3])
    assert b["kv_pooled"][2] == pytest.approx(500.0 - (solo[2] - solo[3]))


def test_a_small_pool_forgets_and_the_fastest_worker_sets_the_floor() -> None:
    trace = _trace()
    cluster = ClusterConfig(num_workers=2, num_gpu_blocks=3, block_size=BS, speeds=(1.0, 2.0))
    b = request_bounds(cluster, trace, _kv(trace))
    # A pool of 6 blocks lost 1-4 to 5-8: the pooled figures recompute the whole prompt.
    assert b["kv_pooled"][2] == pytest.approx(500.0)
    assert b["floor_pooled"][2] == pytest.approx(solo_prefill_ms(320, 2.0, 8192))
    assert b["floor_ideal"][2] == pytest.approx(solo_prefill_ms(64, 2.0, 8192))
    assert np.all(b["floor_ideal"] <= b["floor_pooled"])
    s = summarize_bounds(b)
    assert s["dynamo_kv"]["p90_ratio"] == pytest.approx(1.0)
    assert s["floor_ideal"]["p90_ratio"] < s["floor_pooled"]["p90_ratio"] <= 1.0


def test_a_full_hit_still_recomputes_its_last_block() -> None:
    trace = TraceFile(
        Path("unused"),
        "agentic",
        [TraceRequest(i, i * 1000.0, 4 * BS, 10, (1, 2, 3, 4), BS) for i in range(2)],
    )
    cluster = ClusterConfig(num_workers=1, num_gpu_blocks=8, block_size=BS)
    b = request_bounds(cluster, trace, _kv(trace))
    assert b["floor_ideal"][1] == pytest.approx(solo_prefill_ms(BS, 1.0, 8192))


def test_least_prefill_is_the_cheapest_split_into_passes() -> None:
    for n in (1, 500, 8192, 8193, 20_000, 50_000):
        brute = min(
            sum(prefill_ms(1, n // k + (1 if i < n % k else 0)) for i in range(k))
            for k in range(-(-n // 8192), -(-n // 8192) + 40)
        )
        assert least_prefill_ms(n, 1.0, 8192) == pytest.approx(brute, rel=1e-6)
        assert least_prefill_ms(n, 1.0, 8192) <= solo_prefill_ms(n, 1.0, 8192) + 1e-9


def test_capacity_floor_spends_the_cache_on_the_requests_the_percentile_needs() -> None:
    from benchmarks.replay.bound import capacity_floor

    tokens = np.array([1000, 1000, 1000])
    max_hits = np.array([900, 900, 900])
    chunk = 8192
    # the median needs two requests at or below T: 900 hits in all cover 450 each.
    t = capacity_floor(tokens, max_hits, 900, 50, 1.0, chunk)
    assert least_prefill_ms(549, 1.0, chunk) < t <= least_prefill_ms(550, 1.0, chunk) + 0.1
    # an unbounded cache leaves each request its infinite-cache miss.
    t = capacity_floor(tokens, max_hits, 10**9, 50, 1.0, chunk)
    assert least_prefill_ms(99, 1.0, chunk) < t <= least_prefill_ms(100, 1.0, chunk) + 0.1
    # no cache at all: the whole prompt.
    t = capacity_floor(tokens, max_hits, 0, 99, 2.0, chunk)
    assert t == pytest.approx(least_prefill_ms(1000, 2.0, chunk), abs=0.1)


def test_records_read_back_as_written(tmp_path: Path) -> None:
    from benchmarks.replay.suite import read_records, write_records

    trace = _trace()
    kv = _kv(trace, worker=1)
    write_records(tmp_path / "kv.csv.gz", kv)
    back = read_records(tmp_path / "kv.csv.gz", trace)
    assert [(r.index, r.worker, r.input_length, r.ttft_ms, r.refused) for r in back] == [
        (r.index, r.worker, r.input_length, r.ttft_ms, False) for r in kv
    ]


def test_a_broken_records_file_names_its_line(tmp_path: Path) -> None:
    """Records of another trace, or a cut file, are an error naming the line, not a KeyError."""
    import gzip

    from benchmarks.replay.suite import read_records, write_records

    trace = _trace()
    path = tmp_path / "kv.csv.gz"
    write_records(path, _kv(trace, worker=1))
    lines = gzip.decompress(path.read_bytes()).decode().splitlines(keepends=True)
    for bad, why in (("999999,0,1.0,2.0,3.0,,0\n", "999999"), ("0,0,1.0\n", "unpack")):
        path.write_bytes(gzip.compress("".join([*lines[:2], bad, *lines[2:]]).encode()))
        with pytest.raises(ValueError, match=rf"kv\.csv\.gz:3: .*{why}"):
            read_records(path, trace)
