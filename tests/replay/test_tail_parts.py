"""The parts of a slow request's TTFT: a short prompt that arrives behind a long one on a
chunked engine waits for the long one's first pass, then shares its second."""

from __future__ import annotations

import pytest

from benchmarks.replay.cluster import ClusterConfig
from benchmarks.replay.dynamo_kv import RoundRobinPolicy
from benchmarks.replay.engine import prefill_ms
from benchmarks.replay.tail_parts import PARTS, tail_parts
from benchmarks.replay.trace import TraceRequest


def _request(index: int, arrival_ms: float, tokens: int) -> TraceRequest:
    blocks = -(-tokens // 64)
    ids = tuple(range(index * 1000, index * 1000 + blocks))  # nothing shared
    return TraceRequest(index, arrival_ms, tokens, 4, ids, 64)


def test_a_short_prompt_behind_a_long_one_waits_then_shares_its_pass() -> None:
    cluster = ClusterConfig(num_workers=1, num_gpu_blocks=1024)
    # 10,000 tokens: a pass of 8,192 (the batch budget), then 1,808 with the short prompt.
    trace = [_request(0, 0.0, 10_000), _request(1, 1.0, 1_000)]
    _, band = tail_parts(trace, cluster, RoundRobinPolicy(), band=(0.0, 100.0))
    first_pass, second_pass = prefill_ms(1, 8192), prefill_ms(1, 2808)
    assert [r.index for r, _ in band] == [0, 1]
    for record, parts in band:
        assert set(parts) == set(PARTS)
        assert sum(parts.values()) == pytest.approx(record.ttft_ms)
        assert parts["decode"] == pytest.approx(0.0, abs=1e-6)  # nothing had a token yet to decode
    long, short = band[0][1], band[1][1]
    assert long["wait"] == pytest.approx(0.0)
    assert long["own"] == pytest.approx(prefill_ms(1, 8192) + prefill_ms(1, 1808))
    assert long["shared"] == pytest.approx(second_pass - prefill_ms(1, 1808))
    assert short["wait"] == pytest.approx(first_pass - 1.0)  # the long prompt's first pass
    assert short["own"] == pytest.approx(prefill_ms(1, 1000))
    assert short["shared"] == pytest.approx(second_pass - prefill_ms(1, 1000))

    # By default only the requests between the 98.5th and 99.5th percentile: of two, none.
    assert tail_parts(trace, cluster, RoundRobinPolicy())[1] == []
