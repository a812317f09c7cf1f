"""Un-hinted traffic on the real stack: a request without a conversation id that extends an
earlier prompt is attributed to that conversation (router/lineage.py) and sent to its home;
an unrelated prompt starts a conversation of its own. Asserted on the processor's trace."""

from __future__ import annotations

import random

import pytest

from deploy.local_stack import LocalStack
from tests.integration.processor_util import chat, trace_of

pytestmark = pytest.mark.integration

WORDS = "agent tool search read cache block worker json value key list plan step".split()


def _text(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def test_an_unhinted_follow_up_continues_its_conversation_at_home(stack: LocalStack) -> None:
    first = _text(11, 1500)  # well past the 512 tokens a match must reach beyond
    rid1, _ = chat(stack.gateway_url, stack.model_name, first)
    rid2, _ = chat(stack.gateway_url, stack.model_name, first + " tool result: " + _text(12, 80))
    rid3, _ = chat(stack.gateway_url, stack.model_name, _text(13, 1500))
    one, two, other = (trace_of(stack, rid) for rid in (rid1, rid2, rid3))

    assert one.prefix_id is None and two.prefix_id is None  # nothing was hinted
    assert one.inferred_conversation is not None, one
    assert two.inferred_conversation == one.inferred_conversation, two
    assert two.home_worker_id == one.worker_id, two
    assert two.worker_id == one.worker_id, two  # its cache is there; nothing else is running
    assert other.inferred_conversation not in (None, one.inferred_conversation), other
