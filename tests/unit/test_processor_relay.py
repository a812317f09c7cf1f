"""The relay merges only outputs that queued up, keeps tokens, usage and finish reason in order,
and hands a stream's error over after the outputs before it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from processor.relay import MAX_READ_AHEAD, Relay, merge_run


def out(*ids: int, **extra: Any) -> dict[str, Any]:
    return {"token_ids": list(ids), "output_type": "text", "finish_reason": None, **extra}


def test_merge_joins_tokens_and_keeps_last_usage_and_finish() -> None:
    usage = {"completion_tokens": 3}
    items = [out(1, completion_usage={"x": 1}), out(2), out(3, finish_reason="stop"), out(9)]
    merged, taken = merge_run(items)
    assert taken == 3  # never past a finish reason
    assert merged["token_ids"] == [1, 2, 3]
    assert merged["finish_reason"] == "stop"
    assert merged["completion_usage"] == {"x": 1}
    items[1]["completion_usage"] = usage
    merged, _ = merge_run(items)
    assert merged["completion_usage"] == usage  # the last one set wins; item 3 has none
    assert items[0]["token_ids"] == [1]  # the worker's outputs are not changed


def test_outputs_with_other_fields_stay_on_their_own() -> None:
    with_logprobs = out(2, log_probs=[-0.1])
    assert merge_run([out(1), with_logprobs, out(3)]) == (out(1), 1)
    assert merge_run([with_logprobs, out(3)]) == (with_logprobs, 1)
    error = out(finish_reason={"error": "boom"})
    assert merge_run([out(1), error]) == (out(1), 1)
    assert merge_run([out(1), out(2, index=1)])[1] == 1


class Worker:
    """An async stream whose outputs arrive when the test releases them."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.read = 0

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        self.read += 1
        return item


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_relay_passes_outputs_one_by_one_when_it_keeps_up() -> None:
    async def run() -> list[Any]:
        worker = Worker()
        relay = Relay(worker)
        got = []
        for i in range(3):
            worker.queue.put_nowait(out(i))
            got.append(await relay.next())
        worker.queue.put_nowait(StopAsyncIteration())
        got.append(await relay.next())
        relay.close()
        return got

    assert asyncio.run(run()) == [out(0), out(1), out(2), None]


def test_relay_merges_a_backlog_then_raises_the_error_after_it() -> None:
    async def run() -> tuple[Any, Exception]:
        worker = Worker()
        relay = Relay(worker)
        for i in range(5):
            worker.queue.put_nowait(out(i))
        worker.queue.put_nowait(ConnectionResetError("worker gone"))
        await settle()
        merged = await relay.next()
        with pytest.raises(ConnectionResetError) as raised:
            await relay.next()
        relay.close()
        return merged, raised.value

    merged, error = asyncio.run(run())
    assert merged["token_ids"] == [0, 1, 2, 3, 4]
    assert str(error) == "worker gone"


def test_relay_reads_a_bounded_amount_ahead_and_stops_on_close() -> None:
    async def run() -> tuple[int, bool]:
        worker = Worker()
        for i in range(MAX_READ_AHEAD * 3):
            worker.queue.put_nowait(out(i))
        relay = Relay(worker)
        await settle()
        read_ahead = worker.read
        relay.close()
        await settle()
        return read_ahead, relay._task.cancelled()

    read_ahead, cancelled = asyncio.run(run())
    assert read_ahead == MAX_READ_AHEAD
    assert cancelled


def test_a_silent_worker_fails_the_stream_after_the_outputs_before_it() -> None:
    async def run() -> tuple[Any, Exception, float, bool]:
        loop = asyncio.get_running_loop()
        worker = Worker()
        relay = Relay(worker, stall_s=0.2)
        worker.queue.put_nowait(out(1))
        await asyncio.sleep(0.1)  # the worker then says nothing more
        first = await relay.next()
        t0 = loop.time()
        with pytest.raises(TimeoutError) as raised:
            await relay.next()
        waited = loop.time() - t0
        await settle()
        return first, raised.value, waited, relay._task.cancelled()

    first, error, waited, cancelled = asyncio.run(run())
    assert first == out(1)
    assert "0.2 s" in str(error)
    assert 0.05 <= waited <= 0.2 + 0.1  # 0.2 s after its last output, 0.1 s of it before next()
    assert cancelled  # the read of the silent worker is given up


def test_outputs_closer_than_the_stall_limit_never_time_out() -> None:
    async def run() -> list[Any]:
        worker = Worker()
        relay = Relay(worker, stall_s=0.1)
        got = []
        for i in range(6):  # 0.36 s in all, each gap 0.06 s
            await asyncio.sleep(0.06)
            worker.queue.put_nowait(out(i))
            got.append(await relay.next())
        relay.close()
        return got

    assert asyncio.run(run()) == [out(i) for i in range(6)]


def test_a_client_slow_to_take_outputs_is_not_a_stalled_worker() -> None:
    """With the read-ahead full the relay waits for the client, not the worker: however long
    the client takes, the stream is not failed for it."""

    async def run() -> list[int]:
        worker = Worker()
        for i in range(MAX_READ_AHEAD + 4):
            worker.queue.put_nowait(out(i))
        worker.queue.put_nowait(StopAsyncIteration())
        relay = Relay(worker, stall_s=0.05)
        await asyncio.sleep(0.3)  # six stall limits with the read-ahead full
        ids: list[int] = []
        while (item := await relay.next()) is not None:
            ids.extend(item["token_ids"])
        relay.close()
        return ids

    assert asyncio.run(run()) == list(range(MAX_READ_AHEAD + 4))
