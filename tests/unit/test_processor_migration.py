"""The continuation request after a mid-stream failure: prompt + tokens sent, max_tokens less."""

from __future__ import annotations

from processor.migration import Continuation

REQ = {
    "token_ids": [1, 2, 3],
    "stop_conditions": {"max_tokens": 10, "ignore_eos": True},
    "sampling_options": {},
}


def test_continuation_appends_sent_tokens_and_reduces_max_tokens() -> None:
    carry = Continuation(REQ, limit=2)
    carry.record([7, 8])
    carry.record([9])
    first = carry.next_request(REQ)
    assert first is not None
    assert first["token_ids"] == [1, 2, 3, 7, 8, 9]
    assert first["stop_conditions"] == {"max_tokens": 7, "ignore_eos": True}
    assert REQ["token_ids"] == [1, 2, 3] and REQ["stop_conditions"]["max_tokens"] == 10
    carry.record([4])
    second = carry.next_request(REQ)
    assert second is not None and second["token_ids"] == [1, 2, 3, 7, 8, 9, 4]
    assert second["stop_conditions"]["max_tokens"] == 6
    assert carry.next_request(REQ) is None  # limit reached
    assert carry.migrations == 2


def test_no_continuation_when_off_guided_or_done() -> None:
    assert Continuation(REQ, limit=0).next_request(REQ) is None
    guided = {**REQ, "sampling_options": {"guided_decoding": {"json": {}}}}
    carry = Continuation(guided, limit=3)
    carry.record([5])
    assert carry.sent is None and carry.next_request(guided) is None
    done = Continuation(REQ, limit=3)
    done.record(list(range(10)))
    assert done.next_request(REQ) is None
    unbounded = {**REQ, "stop_conditions": {}}
    carry = Continuation(unbounded, limit=1)
    carry.record([5])
    follow = carry.next_request(unbounded)
    assert follow is not None and follow["stop_conditions"] == {}


def test_worker_refusal_in_the_stream_is_an_error() -> None:
    """The mocker's refusal arrives as an output whose finish reason is an error."""
    from processor.handler import WorkerRejected, _item_error

    refusal = {
        "token_ids": [],
        "finish_reason": {"error": "request rejected: request exceeds worker admission limits"},
    }
    assert _item_error(refusal) == "request rejected: request exceeds worker admission limits"
    assert _item_error({"token_ids": [5], "finish_reason": "length"}) is None
    assert _item_error({"token_ids": [5]}) is None
    err = WorkerRejected(1, "request rejected: request exceeds worker admission limits")
    assert getattr(err.to_client(), "code", None) == 400
    assert not hasattr(WorkerRejected(1, "engine crashed").to_client(), "code")
