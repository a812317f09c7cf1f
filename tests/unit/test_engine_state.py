"""The workers' own reports: capacity from model cards, held-back requests from FPM bytes.

The subscriber itself (``EngineState`` with Dynamo's ``FpmEventSubscriber``) runs against real
mocker workers in tests/integration/test_processor_metrics.py."""

from __future__ import annotations

import asyncio
import json

import pytest
from dynamo.common.forward_pass_metrics import (
    ForwardPassMetrics,
    QueuedRequestMetrics,
    ScheduledRequestMetrics,
    encode,
)

from processor.engine_state import (
    EngineState,
    agreed_block_size,
    capacity_blocks,
    card_block_size,
    prefill_chunk_tokens,
    prompt_limit_tokens,
    waiting_requests,
)
from router.service import BlockSizeMismatch


def _card(blocks: object, block_size: object = 64, dp: object = None) -> str:
    rc: dict[str, object] = {"total_kv_blocks": blocks}
    if dp is not None:
        rc["data_parallel_size"] = dp
    return json.dumps(
        {"display_name": "m", "kv_cache_block_size": block_size, "runtime_config": rc}
    )


class _Subscriber:
    """A stand-in for Dynamo's subscriber: model cards and stats the test sets directly."""

    def __init__(self, cards: dict[str, str]) -> None:
        self.cards = cards
        self.stats: dict = {}

    def get_model_cards(self) -> dict[str, str]:
        return self.cards

    def get_recent_stats(self) -> dict:
        return self.stats

    def shutdown(self) -> None:
        pass


def test_capacity_from_the_card_in_router_blocks() -> None:
    assert capacity_blocks(_card(192), 64) == 192
    assert capacity_blocks(_card(100, block_size=16), 64) == 25  # 1600 tokens = 25 of ours
    assert capacity_blocks(_card(192, dp=2), 64) == 384  # per rank x ranks of the worker


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        json.dumps({"runtime_config": None}),
        json.dumps({"runtime_config": [1]}),
        json.dumps({"runtime_config": "8192 blocks"}),
        _card(None),
        _card(0),
        _card(-5),
        _card("192"),
        _card(True),
        _card(192, block_size=0),
        _card(192, dp="2"),
    ],
)
def test_cards_without_a_usable_capacity_are_ignored(body: str) -> None:
    assert capacity_blocks(body, 64) is None


def _fpm(worker: str, prefill: int = 0, decode: int = 0, version: int = 1) -> bytes:
    return encode(
        ForwardPassMetrics(
            version=version,
            worker_id=worker,
            wall_time=0.01,
            scheduled_requests=ScheduledRequestMetrics(
                num_decode_requests=3, sum_decode_kv_tokens=9000
            ),
            queued_requests=QueuedRequestMetrics(
                num_prefill_requests=prefill,
                sum_prefill_tokens=1500 * prefill,
                num_decode_requests=decode,
            ),
        )
    )


def test_waiting_requests_per_worker_from_dynamos_own_encoding() -> None:
    stats = {
        ("11", 0): _fpm("11", prefill=2),
        ("11", 1): _fpm("11", decode=1),  # a second dp rank of the same worker
        ("12", 0): _fpm("12"),  # nothing held back: left out
        ("13", 0): _fpm("13", prefill=4, version=2),  # unknown schema: skipped
        ("14", 0): b"\xc1garbage",  # undecodable: skipped
        ("not-an-id", 0): _fpm("x", prefill=1),
    }
    assert waiting_requests(stats) == {11: 3}


def _sized(block_size: int | None) -> str:
    card: dict = {"display_name": "w", "runtime_config": {"total_kv_blocks": 100}}
    if block_size is not None:
        card["kv_cache_block_size"] = block_size
    return json.dumps(card)


def test_block_size_comes_from_the_cards_and_disagreement_is_refused() -> None:
    """The workers' cards name the block size; the setting is only the fallback for cards
    without one, and a processor that was told another size, or workers that disagree with
    each other, refuse to start with the sizes in the message."""
    assert agreed_block_size({"1": _sized(16), "2": _sized(16)}, 64, explicit=False) == 16
    assert agreed_block_size({"1": _sized(None), "2": _sized(16)}, 64, explicit=False) == 16
    assert agreed_block_size({"1": _sized(None)}, 32, explicit=False) == 32
    assert agreed_block_size({}, 32, explicit=True) == 32
    assert agreed_block_size({"1": _sized(64)}, 64, explicit=True) == 64
    with pytest.raises(BlockSizeMismatch, match=r"AKR_PROCESSOR_BLOCK_SIZE=64 .* say"):
        agreed_block_size({"1": _sized(16)}, 64, explicit=True)
    with pytest.raises(BlockSizeMismatch, match="disagree"):
        agreed_block_size({"1": _sized(16), "2": _sized(32)}, 64, explicit=False)
    assert card_block_size("not json") is None and card_block_size(_sized(0)) is None


def test_the_prompt_limit_is_the_largest_worker_context_within_its_kv_capacity() -> None:
    """The limit the processor registers as its context_length (the gateway's prompt check and
    body limit follow it through the stock frontend's model list)."""
    small, big = _card(1024), _card(4096)  # 65536 and 262144 tokens of KV
    assert prompt_limit_tokens({"1": small, "2": big}, 64) == 4096 * 64
    with_ctx = json.loads(big)
    with_ctx["context_length"] = 131072  # the model's own context bounds a larger KV cache
    assert prompt_limit_tokens({"1": small, "2": json.dumps(with_ctx)}, 64) == 131072
    with_ctx["runtime_config"]["context_length"] = 32768  # the engine's max_model_len
    assert prompt_limit_tokens({"2": json.dumps(with_ctx)}, 64) == 32768
    assert prompt_limit_tokens({"1": "not json", "2": json.dumps({"x": 1})}, 64) is None
    odd = json.dumps({"runtime_config": [1]})  # a card of another shape is skipped
    assert prompt_limit_tokens({"1": small, "2": odd}, 64) == 1024 * 64
    assert prompt_limit_tokens({}, 64) is None


def test_prefill_chunk_is_the_smallest_engine_pass_the_cards_report() -> None:
    def with_chunk(chunk: object) -> str:
        card = json.loads(_card(1024))
        card["runtime_config"]["max_num_batched_tokens"] = chunk
        return json.dumps(card)

    assert prefill_chunk_tokens({"1": with_chunk(8192), "2": with_chunk(2048)}) == 2048
    assert prefill_chunk_tokens({"1": with_chunk(8192), "2": _card(1024)}) == 8192
    assert prefill_chunk_tokens({"1": with_chunk(0), "2": with_chunk("x")}) is None
    assert prefill_chunk_tokens({"1": "not json", "2": _card(1024)}) is None


async def test_a_refresh_that_raises_does_not_stop_the_polling() -> None:
    sub = _Subscriber({"1": _card(1024)})
    state = EngineState(sub, 64, poll_s=0.01)
    state.start()
    sub.stats = {"not a (worker, rank) key": b""}  # a shape nobody foresaw
    for _ in range(100):
        if state.errors:
            break
        await asyncio.sleep(0.01)
    sub.stats, sub.cards = {}, {"1": _card(2048)}
    for _ in range(100):
        if state.capacity.get(1) == 2048:
            break
        await asyncio.sleep(0.01)
    await state.stop()
    assert state.errors >= 1 and state.capacity == {1: 2048}


def test_a_worker_joining_with_another_block_size_is_marked(caplog) -> None:
    """Start-up refuses cards that disagree; a worker that joins later with another
    kv_cache_block_size was taken as is and its blocks counted in the wrong unit."""

    sub = _Subscriber({"1": _card(1024, 64), "2": _card(1024, 64)})
    state = EngineState(sub, 64, poll_s=1.0)
    state.refresh()
    assert state.mismatched == frozenset()
    sub.cards = {**sub.cards, "3": _card(1024, 16)}
    with caplog.at_level("ERROR"):
        state.refresh()
        state.refresh()  # logged once per newcomer
    assert state.mismatched == {3}
    assert len([r for r in caplog.records if "kv_cache_block_size" in r.message]) == 1


def test_the_prompt_limit_follows_workers_that_join_leave_or_change() -> None:
    """Read on every refresh, not only at start-up: a worker that joins with a larger KV raises
    it, a changed card lowers it, and with no card at all the last known limit stays."""

    sub = _Subscriber({"1": _card(64)})
    state = EngineState(sub, 64, poll_s=1.0)
    seen = []
    for cards in ({"1": _card(64)}, {"1": _card(64), "2": _card(256)}, {"2": _card(128)}, {}):
        sub.cards = cards
        state.refresh()
        seen.append(state.prompt_limit)
    assert seen == [64 * 64, 256 * 64, 128 * 64, 128 * 64]
