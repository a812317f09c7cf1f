"""The simulated mocker engine on hand-made requests: block pool, scheduling and timing."""

from __future__ import annotations

import pytest

from benchmarks.replay.engine import Engine, EngineState, decode_ms, prefill_ms

BS = 4


class _Req:
    def __init__(self, rid: str) -> None:
        self.request_id = rid


def _state(rid: str, blocks: list[int], prompt: int, out: int) -> EngineState:
    return EngineState(_Req(rid), prompt, out, blocks, BS)


def _run(engine: Engine, now: float = 0.0, limit: int = 1000) -> float:
    """Run passes back to back until the engine is idle; return the last pass's end."""
    for _ in range(limit):
        if not engine.has_work():
            return now
        now = engine.execute_pass(now).end_ms
    raise AssertionError("engine did not drain")


def test_default_polynomials() -> None:
    # 8192 new prompt tokens in one pass: the mocker's 169.137 ms.
    assert prefill_ms(2, 4096) == pytest.approx(169.1369, abs=1e-3)
    assert prefill_ms(0, 100) == 0.0
    assert decode_ms(0, 1000) == pytest.approx(5.74)
    assert decode_ms(5000, 1000) == decode_ms(1000, 1000)  # clamped to a full pool


def test_prefix_becomes_visible_to_a_later_request_of_the_same_pass() -> None:
    eng = Engine(num_gpu_blocks=64, block_size=BS)
    a = _state("a", [1, 2, 3], prompt=12, out=2)
    b = _state("b", [1, 2, 9], prompt=12, out=2)
    eng.submit(a)
    eng.submit(b)
    res = eng.execute_pass(0.0)
    # b reuses a's first two blocks; a full hit would still recompute the last block.
    assert (a.reused_tokens, b.reused_tokens) == (0, 8)
    assert sorted(res.kv_events) == [1, 2, 3, 9]
    # first tokens of a pass that only prefilled carry no decode time
    assert res.end_ms == pytest.approx(prefill_ms(2, (12 + 12) // 2 - 8 // 2), abs=1e-6)
    assert {s.req.request_id for s in res.first_tokens} == {"a", "b"}


def test_full_hit_recomputes_the_last_block() -> None:
    eng = Engine(num_gpu_blocks=64, block_size=BS)
    eng.submit(_state("a", [1, 2], prompt=8, out=1))
    _run(eng)
    again = _state("b", [1, 2], prompt=8, out=1)
    eng.submit(again)
    _run(eng)
    assert again.reused_tokens == 4


def test_eviction_takes_free_capacity_first_then_leaves_before_parents() -> None:
    eng = Engine(num_gpu_blocks=4, block_size=BS)
    eng.submit(_state("a", [1, 2], prompt=8, out=1))
    _run(eng)
    assert eng.num_cached_blocks() == 2 and eng.num_active_blocks() == 0
    # two free blocks satisfy this request without evicting anything
    eng.submit(_state("b", [5, 6], prompt=8, out=1))
    t = _run(eng)
    assert eng.num_cached_blocks() == 4
    # a three-block prompt evicts a's leaf (2) and parent (1), then b's leaf (6)
    eng.submit(_state("c", [7, 8, 9], prompt=12, out=1))
    res = eng.execute_pass(t)
    removed = [~h for h in res.kv_events if h < 0]
    assert removed == [2, 1, 6]


def test_admission_waits_for_blocks_and_preemption_is_lifo() -> None:
    eng = Engine(num_gpu_blocks=6, block_size=BS)
    first = _state("first", [11, 12], prompt=8, out=9)  # grows to 17 tokens = 5 blocks
    second = _state("second", [21], prompt=4, out=9)
    eng.submit(first)
    eng.submit(second)
    _run(eng)
    assert eng.preemptions >= 1
    assert first.finish_ms is not None and second.finish_ms is not None
    # the newest running request was the one pushed back: it finishes last
    assert second.finish_ms > first.finish_ms
    assert eng.num_active_blocks() == 0


def test_chunked_prefill_splits_a_prompt_over_the_token_budget() -> None:
    eng = Engine(num_gpu_blocks=64, block_size=BS, max_num_batched_tokens=8)
    s = _state("a", [1, 2, 3, 4, 5], prompt=20, out=1)
    eng.submit(s)
    ends = []
    now = 0.0
    while eng.has_work():
        now = eng.execute_pass(now).end_ms
        ends.append(now)
    assert len(ends) == 3  # 8 + 8 + 4 prompt tokens
    assert s.first_token_ms == ends[-1]


def test_speed_divides_durations() -> None:
    fast = Engine(num_gpu_blocks=64, block_size=BS, speed=2.0)
    slow = Engine(num_gpu_blocks=64, block_size=BS, speed=1.0)
    for eng in (fast, slow):
        eng.submit(_state("a", [1, 2, 3], prompt=12, out=3))
    # equal up to the nanosecond each pass rounds to
    assert _run(fast) == pytest.approx(_run(slow) / 2, abs=1e-5)


def test_oversized_prompt_is_an_error() -> None:
    eng = Engine(num_gpu_blocks=2, block_size=BS)
    with pytest.raises(ValueError, match="exceed"):
        eng.submit(_state("big", [1, 2, 3], prompt=12, out=1))
