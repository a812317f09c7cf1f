"""Relay of one worker's stream that merges the outputs it produced while the processor was busy.

Why: the processor's cost is per output, not per token. Dynamo decodes every output of the
worker into Python and encodes every output of the handler back, each a hand-off of the GIL
between its runtime threads and the event loop. When hundreds of streams run at once the
processor falls behind and outputs queue up. ``Relay`` reads the worker's stream in a task of
its own, and the handler takes everything that has arrived since its last output, merged into
one (token ids joined): a backlog of n outputs costs one encode instead of n, and a stream the
processor keeps up with is relayed output by output, as it came.

Only plain token outputs are merged (no text, log probabilities or other fields set), and
never past one that carries a finish reason, so the client gets the same tokens, usage and
finish reason in the same order. At most ``MAX_READ_AHEAD`` outputs are read ahead of the
client; the rest waits in the worker's stream.

A worker silent for ``stall_s`` while the relay waits for its next output has failed: the
handler gets ``TimeoutError`` after the outputs before it. One timer per stream watches that,
re-armed only when it fires, so an output costs a clock read instead of a timer of its own
(``asyncio.timeout`` around every read cost 5-7 µs per output).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

MAX_READ_AHEAD = 16
# Fields a merged output may carry; any other field set keeps the output on its own.
_MERGEABLE = frozenset({"token_ids", "output_type", "index", "completion_usage", "finish_reason"})


class Relay:
    """The rest of a worker's stream, read ahead in a task, taken in merged outputs."""

    __slots__ = (
        "_done",
        "_error",
        "_items",
        "_iterator",
        "_loop",
        "_reading_since",
        "_room",
        "_stall_s",
        "_task",
        "_timer",
        "_wake",
        "merged",
    )

    def __init__(self, iterator: AsyncIterator[Any], stall_s: float = 0.0) -> None:
        self._iterator = iterator
        self._items: list[Any] = []
        self.merged = 0  # outputs merged into the one before them
        self._done = False
        self._error: BaseException | None = None
        self._wake: asyncio.Future[None] | None = None  # the handler, waiting for outputs
        self._room: asyncio.Future[None] | None = None  # the reader, waiting for room
        self._loop = loop = asyncio.get_running_loop()
        self._stall_s = stall_s
        self._reading_since: float | None = None  # loop time the wait for the worker began
        self._timer = loop.call_at(loop.time() + stall_s, self._watch) if stall_s else None
        self._task = loop.create_task(self._read())

    async def _read(self) -> None:
        loop = self._loop
        try:
            while True:
                self._reading_since = loop.time()
                item = await self._iterator.__anext__()
                self._reading_since = None
                self._items.append(item)
                _settle(self._wake)
                if len(self._items) >= MAX_READ_AHEAD:  # the client's turn: not a stall
                    self._room = loop.create_future()
                    await self._room
        except StopAsyncIteration:
            pass
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the worker's fault: handed to the handler in order
            self._error = exc
        finally:
            self._done = True
            if self._timer is not None:
                self._timer.cancel()
            _settle(self._wake)

    def _watch(self) -> None:
        """The stall timer: fail the stream if the worker has been silent for ``stall_s``,
        else look again when it would be."""
        if self._done:
            return
        since, now = self._reading_since, self._loop.time()
        if since is not None and now - since >= self._stall_s:
            self._error = TimeoutError(f"no output from the worker for {self._stall_s:g} s")
            self._task.cancel()  # its finally ends the stream and wakes the handler
            return
        due = since + self._stall_s if since is not None else now + self._stall_s
        self._timer = self._loop.call_at(due, self._watch)

    async def next(self) -> Any | None:
        """The next output, merging all that arrived since the last; None at the end of the
        stream. Raises the stream's error after the outputs that came before it."""
        while not self._items:
            if self._done:
                if self._error is not None:
                    raise self._error
                return None
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        items = self._items
        if len(items) == 1:
            self._items = []
            _settle(self._room)
            return items[0]
        merged, taken = merge_run(items)
        self.merged += taken - 1
        self._items = items[taken:]
        _settle(self._room)
        return merged

    def close(self) -> None:
        """Stop reading (the handler is done with the stream)."""
        self._task.cancel()
        if self._timer is not None:
            self._timer.cancel()


def merge_run(items: list[Any]) -> tuple[Any, int]:
    """The longest mergeable run at the head of ``items`` as one output, and its length."""
    first = items[0]
    if not _mergeable(first):
        return first, 1
    merged = dict(first)
    ids = list(first.get("token_ids") or ())
    taken = 1
    for item in items[1:]:
        if merged.get("finish_reason") is not None or not _mergeable(item):
            break
        if item.get("index") != merged.get("index"):
            break
        ids.extend(item.get("token_ids") or ())
        if item.get("completion_usage") is not None:
            merged["completion_usage"] = item["completion_usage"]
        merged["finish_reason"] = item.get("finish_reason")
        taken += 1
    merged["token_ids"] = ids
    return merged, taken


def _mergeable(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    for key, value in item.items():
        if value is not None and key not in _MERGEABLE:
            return False
    reason = item.get("finish_reason")
    if reason is not None and (not isinstance(reason, str) or reason.startswith("error")):
        return False  # an error stays on its own, after the tokens before it
    return item.get("output_type") in (None, "text")


def _settle(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
