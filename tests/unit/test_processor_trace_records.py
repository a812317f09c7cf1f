"""The processor's trace record of a request agrees with itself and with the metrics, for
the outcomes that take unusual paths (a continuation elsewhere, a request never placed)."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
import pytest

from processor.handler import ProcessorHandler
from processor.traces import TraceRecord
from tests.unit.test_processor_request_path import Script, answer, handler, request


class Captured:
    """The trace writer's ``put``: keeps the records."""

    def __init__(self) -> None:
        self.records: list[TraceRecord] = []

    def put(self, record: TraceRecord) -> bool:
        self.records.append(record)
        return True


def traced(h: ProcessorHandler) -> Captured:
    h._writer = Captured()  # type: ignore[assignment]
    return h._writer  # type: ignore[return-value]


async def test_a_continuations_cached_tokens_count_within_the_original_prompt() -> None:
    """A continuation's prompt is the original plus the tokens sent; the worker's cached count
    is of that longer prompt. The record's prompt_tokens is the original's, so its
    cached_tokens must not exceed it (the metrics count it the same way)."""
    cached = {"prompt_tokens_details": {"cached_tokens": 20}}
    h, _ = handler(
        [
            Script([{"token_ids": [7, 8, 9, 10]}], ConnectionError("reset")),
            Script([{"token_ids": [11], "finish_reason": "length", "completion_usage": cached}]),
        ],
        migration_limit=1,
    )
    trace = traced(h)
    await answer(h, request(prompt=16))
    (rec,) = trace.records
    assert rec.migrations == 1 and rec.prompt_tokens == 16
    assert rec.cached_tokens == 16
    assert h.metrics.cached_tokens._value.get() == 16


@pytest.mark.parametrize("why", ["unavailable", "rejected"])
async def test_a_request_never_placed_has_no_decision_time(why: str) -> None:
    """No routable worker, or a prompt longer than any worker's KV: no decision was made, so
    the record has neither a worker nor a decision time (0 µs would read as a decision that
    took no time)."""
    h, _ = handler([], no_worker_wait_s=0)
    if why == "unavailable":
        h._client.instance_ids = lambda: []  # type: ignore[method-assign]
    else:  # every worker holds 2 blocks of 4 tokens; the prompt has 16
        h.engine = SimpleNamespace(capacity={1: 2, 2: 2}, mismatched=frozenset())  # type: ignore[assignment]
    trace = traced(h)
    with pytest.raises(Exception, match="akr_unavailable" if why == "unavailable" else "exceeds"):
        await answer(h, request(prompt=16))
    (rec,) = trace.records
    assert rec.worker_id is None and rec.finish_reason == why
    assert rec.decision_us is None


async def test_a_placed_request_records_its_decision_time() -> None:
    h, _ = handler([Script([{"token_ids": [7], "finish_reason": "stop"}])])
    trace = traced(h)
    await answer(h, request())
    (rec,) = trace.records
    assert rec.worker_id is not None and rec.decision_us is not None and rec.decision_us > 0
    assert rec.error is None and rec.finish_reason == "stop"


async def test_the_record_keeps_the_request_id_the_gateway_annotated() -> None:
    """The gateway's ``akr.v1.request_id`` annotation is the record's x_request_id (the id of
    the gateway's own record and of the client's answer); without one the field is absent."""
    h, _ = handler([Script([{"token_ids": [7], "finish_reason": "stop"}])] * 2)
    trace = traced(h)
    annotated = {**request(), "annotations": ["mine", "akr.v1.request_id=rq-42"]}
    await answer(h, annotated)
    await answer(h, request())
    assert [r.x_request_id for r in trace.records] == ["rq-42", None]


def _schema_fields() -> dict[str, dict]:
    schema = msgspec.json.schema(TraceRecord)
    return schema["$defs"]["TraceRecord"]["properties"]


def test_the_printed_schema_describes_every_field() -> None:
    """``python -m processor.traces schema`` is where the README sends users: units, absent
    values and the outcomes must be there, not only types."""
    fields = _schema_fields()
    assert [name for name, spec in fields.items() if not spec.get("description")] == []


async def test_hint_fields_hold_what_the_router_used_as_the_schema_says() -> None:
    """A request without hints: the record holds the values the router used (its defaults,
    osl from max_tokens), not "absent" as for a hint not sent."""
    h, _ = handler([Script([{"token_ids": [7], "finish_reason": "stop"}])])
    trace = traced(h)
    await answer(h, request(prompt=16, max_tokens=10))
    (rec,) = trace.records
    used = (rec.prefix_id, rec.total_requests, rec.osl, rec.iat_ms)
    used += (rec.latency_sensitivity, rec.priority, rec.pin_ttl_s)
    assert used == (None, 1, 10, None, 0.0, 0, None)
    fields = _schema_fields()
    assert "max_tokens" in fields["osl"]["description"]
    for name in ("total_requests", "latency_sensitivity", "priority"):
        assert "default" in fields[name]["description"], name
