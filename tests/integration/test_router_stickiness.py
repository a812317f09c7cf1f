"""On the real stack: a conversation stays with its cache while other load spreads, and
what keeps it there is the affinity term (plain KV overlap would keep most turns home too, so
the worker alone does not show affinity working)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import httpx
import pytest

from deploy.local_stack import LocalStack, StackConfig
from tests.conftest import wait_for_trace

pytestmark = pytest.mark.integration

TOOL_S = 0.15  # the conversation's tool call between turns (its hint says iat 100 ms)
MAX_BACKGROUND = 60
WORDS = "agent tool search read cache block worker json value key list plan step".split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def _conversation(
    client: httpx.AsyncClient, url: str, model: str, turns: int, done: asyncio.Event
) -> None:
    """One hinted conversation with a short tool call after each answer."""
    rng = random.Random(1)
    messages = [{"role": "system", "content": _text(rng, 2500)}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"tool result {turn}: {_text(rng, 150)}"})
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": 8,
            "nvext": {"agent_hints": {"prefix_id": "conv-A", "total_requests": turns, "iat": 100}},
        }
        resp = await client.post(f"{url}/v1/chat/completions", json=body)
        resp.raise_for_status()
        messages.append(
            {"role": "assistant", "content": resp.json()["choices"][0]["message"]["content"]}
        )
        await asyncio.sleep(TOOL_S)
    done.set()


async def _background(client: httpx.AsyncClient, url: str, model: str, done: asyncio.Event) -> int:
    """Unrelated single-shot requests with long, distinct prompts and long answers, in waves
    of 4 until the conversation is done; how many were sent."""
    rng = random.Random(2)

    async def one(i: int) -> None:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"job {i}: {_text(rng, 900)}"}],
            "max_tokens": 64,
        }
        (await client.post(f"{url}/v1/chat/completions", json=body)).raise_for_status()

    sent = 0
    while not done.is_set() and sent < MAX_BACKGROUND:
        await asyncio.gather(*(one(sent + k) for k in range(4)))
        sent += 4
    return sent


def test_conversation_keeps_its_worker_while_other_load_spreads() -> None:
    turns = 8
    with LocalStack(StackConfig(workers=3, speedup=2.0, gpu_blocks=4096)) as stack:

        async def drive() -> int:
            done = asyncio.Event()
            async with httpx.AsyncClient(timeout=60) as client:
                _, sent = await asyncio.gather(
                    _conversation(client, stack.url, stack.model_name, turns, done),
                    _background(client, stack.url, stack.model_name, done),
                )
            return sent

        background = asyncio.run(drive())
        conv = wait_for_trace(stack, lambda r: r.prefix_id == "conv-A", count=turns)
        rest = wait_for_trace(
            stack, lambda r: r.prefix_id is None and r.output_tokens == 64, count=background
        )

    conv.sort(key=lambda r: r.ts)
    home = conv[0].worker_id
    assert [r.worker_id for r in conv] == [home] * turns, [r.reason for r in conv]
    assert all((r.cached_tokens or 0) > 0 for r in conv[1:])
    # the later turns hit more than the shared chat-template preamble: the conversation's cache
    assert all((r.cached_tokens or 0) >= conv[i].prompt_tokens // 2 for i, r in enumerate(conv[1:]))
    # The other load spreads around the conversation: it uses every worker, and while the
    # conversation runs the home is no hot spot. The home is busy only during its turns'
    # prefills, so its share of the other load is near a fair one and varies run to run (5-10
    # of 24, mean 6.9, over 18 runs); a router that piled the other load on the home would
    # send it more than half. After the last turn the home is an ordinary worker again, so
    # only the requests routed during the conversation count.
    assert len(Counter(r.worker_id for r in rest)) == 3, rest
    during = Counter(r.worker_id for r in rest if r.ts <= conv[-1].ts)
    assert during[home] <= sum(during.values()) / 2, (during, home)
    # Every later turn's decision valued the home's exclusive cache while turns remained: the
    # chosen candidate carries a positive affinity term (0 with AKR_ROUTER_AFFINITY_WEIGHT=0).
    for r in conv[1:]:
        chosen = r.candidates[0]
        assert chosen.worker_id == home and chosen.terms["affinity_ms"] > 0, (r.reason, chosen)
