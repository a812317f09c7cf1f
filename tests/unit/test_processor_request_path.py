"""One request through ``ProcessorHandler.generate`` with the real in-process router: worker
streams scripted by the test, so the failure paths (retry, continuation) run exactly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from processor.config import ProcessorConfig
from processor.engine_state import EngineState
from processor.handler import ProcessorHandler
from processor.routing import LocalRouting
from router.config import RouterConfig
from router.service import Feedback, RouterService
from tests.unit.test_engine_state import _card

BLOCK = 4
WORKERS = (1, 2)


class Script:
    """A worker's answer: these outputs, then ``error`` raised (or the end of the stream)."""

    def __init__(self, outputs: list[dict[str, Any]], error: BaseException | None = None) -> None:
        self.outputs, self.error = list(outputs), error

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        await asyncio.sleep(0)
        if self.outputs:
            return self.outputs.pop(0)
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration


class Client:
    """``client.direct`` of the worker endpoint: hands out the scripts in order."""

    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.sent: list[tuple[int, list[int], dict[str, Any]]] = []

    def instance_ids(self) -> list[int]:
        return list(WORKERS)

    async def direct(
        self, request: dict[str, Any], worker: int, annotated: bool, context: Any
    ) -> Script:
        self.sent.append((worker, list(request["token_ids"]), dict(request["stop_conditions"])))
        return self.scripts.pop(0)


class Kv:
    """``KvRouter.get_potential_loads``: nothing cached anywhere."""

    async def get_potential_loads(self, token_ids: list[int]) -> list[dict[str, Any]]:
        return [
            {
                "worker_id": w,
                "potential_prefill_tokens": len(token_ids),
                "potential_decode_blocks": 0,
            }
            for w in WORKERS
        ]


def handler(scripts: list[Script], **settings: Any) -> tuple[ProcessorHandler, list[Feedback]]:
    """A started handler (without Dynamo's runtime) and the feedback its router got."""
    config = ProcessorConfig(admission_deadline_s=0, worker_quarantine_s=0, **settings)
    service = RouterService(RouterConfig(), block_size=BLOCK)
    h = ProcessorHandler(None, config, service)
    h.block_size = BLOCK
    h._client = Client(scripts)
    routing = LocalRouting(service, Kv(), None, BLOCK)
    sent: list[Feedback] = []

    def feedback(msg: Feedback) -> None:
        sent.append(msg)
        service.feedback(msg)

    routing.feedback = feedback  # type: ignore[method-assign]
    h.routing = routing
    return h, sent


async def answer(h: ProcessorHandler, request: dict[str, Any]) -> list[dict[str, Any]]:
    return [item async for item in h.generate(request, None)]


def request(prompt: int = 16, max_tokens: int = 10) -> dict[str, Any]:
    return {
        "token_ids": list(range(prompt)),
        "stop_conditions": {"max_tokens": max_tokens},
        "sampling_options": {},
    }


async def test_a_stream_lost_after_its_finish_reason_is_a_whole_answer() -> None:
    """The worker sent its last output (finish reason) and then its stream broke (e.g. it died
    before the end-of-stream marker): the answer is complete, so it is not continued elsewhere
    (the client would get tokens after "stop") nor failed."""
    whole = [{"token_ids": [7]}, {"token_ids": [8], "finish_reason": "stop"}]
    h, feedback = handler(
        [Script(whole, ConnectionError("reset")), Script([{"token_ids": [9]}])],
        migration_limit=3,
    )
    outputs = await answer(h, request())
    assert [o["token_ids"] for o in outputs] == [[7], [8]]
    assert len(h._client.sent) == 1  # no continuation
    finish = [f for f in feedback if f.event == "finish"]
    assert len(finish) == 1 and finish[0].ok
    assert h.metrics.migrations._value.get() == 0


async def test_a_continuation_is_routed_and_reported_with_its_own_prompt() -> None:
    """A continuation's prompt is the original and the tokens already sent: the router places
    it, and the learner explains its TTFT, with that length, not the original's."""
    cached = {"prompt_tokens_details": {"cached_tokens": 16}}
    h, feedback = handler(
        [
            Script([{"token_ids": [7, 8, 9, 10]}], ConnectionError("reset")),
            Script([{"token_ids": [11], "finish_reason": "length", "completion_usage": cached}]),
        ],
        migration_limit=1,
    )
    routes = []
    decide = h.routing.decide

    async def spy(route: Any, token_ids: list[int], live: frozenset[int]) -> Any:
        routes.append((route.prompt_tokens, len(token_ids)))
        return await decide(route, token_ids, live)

    h.routing.decide = spy  # type: ignore[method-assign]
    outputs = await answer(h, request(prompt=16))
    assert [o["token_ids"] for o in outputs] == [[7, 8, 9, 10], [11]]
    assert [len(ids) for _, ids, _ in h._client.sent] == [16, 20]
    assert routes == [(16, 16), (20, 20)]
    last = [f for f in feedback if f.event == "finish"][-1]
    assert last.ok and last.uncached_tokens == 20 - 16


async def test_a_retry_is_the_same_turn_of_its_conversation() -> None:
    """A request retried after its worker failed is one request of its conversation, not two:
    the retry moves the conversation's home but spends none of its reuse budget, so its last
    request still finds the home, and the conversation leaves no entry behind it."""
    from router.hints import AgentHints, encode_annotations

    hints = encode_annotations(AgentHints(prefix_id="conv-1", total_requests=3))
    done = [{"token_ids": [1], "finish_reason": "stop"}]
    h, _ = handler(
        [Script([], ConnectionError("refused")), Script(done), Script(done), Script(done)],
        max_retries=1,
    )
    table = h.service.router.table
    remaining = []
    for turn in range(3):
        await answer(h, {**request(prompt=16 + 8 * turn), "annotations": hints})
        entry = table.get("conv-1", 0.0)
        remaining.append(None if entry is None else entry.remaining)
    assert remaining == [2, 1, None]  # before: [1, None, 2] (the last turn began anew)


async def test_a_worker_with_another_block_size_is_not_routed_to() -> None:
    """A worker whose card states another KV block size (it joined after start-up) is left
    out of every decision: its blocks would be counted in the wrong unit."""

    class Subscriber:
        def get_model_cards(self) -> dict[str, str]:
            return {"1": _card(1024, block_size=16), "2": _card(1024, block_size=BLOCK)}

        def get_recent_stats(self) -> dict[str, Any]:
            return {}

    engine = EngineState(Subscriber(), BLOCK, poll_s=1.0)
    engine.refresh()

    class CachedOnOne(Kv):
        """Worker 1 holds the whole prompt: the router's choice, unless it is left out."""

        async def get_potential_loads(self, token_ids: list[int]) -> list[dict[str, Any]]:
            rows = await super().get_potential_loads(token_ids)
            rows[0]["potential_prefill_tokens"] = 0
            return rows

    h, _ = handler([Script([{"token_ids": [7], "finish_reason": "stop"}]) for _ in range(2)])
    h.routing._kv = CachedOnOne()  # type: ignore[union-attr]
    await answer(h, request())
    assert [worker for worker, _, _ in h._client.sent] == [1]  # as the router would
    h.engine = engine
    await answer(h, request())
    assert [worker for worker, _, _ in h._client.sent] == [1, 2]
