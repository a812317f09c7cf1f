"""On the real stack: a conversation stays with its cache while other load moves away, and
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

WORDS = "agent tool search read cache block worker json value key list plan step".split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def _conversation(client: httpx.AsyncClient, url: str, model: str, turns: int) -> None:
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


async def _background(client: httpx.AsyncClient, url: str, model: str, count: int) -> None:
    """Unrelated single-shot requests with long, distinct prompts and long answers."""
    rng = random.Random(2)

    async def one(i: int) -> None:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"job {i}: {_text(rng, 900)}"}],
            "max_tokens": 64,
        }
        (await client.post(f"{url}/v1/chat/completions", json=body)).raise_for_status()

    for wave in range(count // 4):
        await asyncio.gather(*(one(wave * 4 + k) for k in range(4)))


def test_conversation_keeps_its_worker_while_other_load_moves_away() -> None:
    turns, background = 8, 24
    with LocalStack(StackConfig(workers=3, speedup=2.0, gpu_blocks=4096)) as stack:

        async def drive() -> None:
            async with httpx.AsyncClient(timeout=60) as client:
                await asyncio.gather(
                    _conversation(client, stack.url, stack.model_name, turns),
                    _background(client, stack.url, stack.model_name, background),
                )

        asyncio.run(drive())
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
    # The other load is balanced around the conversation: it uses every worker, and the
    # conversation's home, busy with its turns, is no hot spot (at most its fair share + 1;
    # session affinity's failure mode is the opposite). Exact shares vary run to run.
    spread = Counter(r.worker_id for r in rest)
    assert len(spread) == 3, spread
    assert spread[home] <= -(-background // 3) + 1, (spread, home)
    # Every later turn's decision valued the home's exclusive cache while turns remained: the
    # chosen candidate carries a positive affinity term (0 with AKR_ROUTER_AFFINITY_WEIGHT=0).
    for r in conv[1:]:
        chosen = r.candidates[0]
        assert chosen.worker_id == home and chosen.terms["affinity_ms"] > 0, (r.reason, chosen)
