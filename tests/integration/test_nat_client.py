"""The real NAT client (nvidia-nat-core 1.9.0 + openai SDK) through the gateway to the stack.

Why the gateway exists: NAT's transport puts ``prefix_id``/``total_requests``/``iat`` into
``nvext.agent_hints`` and adds ``nvext.cache_control``; Dynamo 1.6.1's stock frontend rejects that
body with 400 (last test). Through the gateway the same client works unchanged, and the
processor's trace shows exactly the hints the client sent.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

nat_dynamo = pytest.importorskip("nat.llm.dynamo_llm", reason="pip install nvidia-nat-core==1.9.0")
openai = pytest.importorskip("openai")

from deploy.local_stack import LocalStack  # noqa: E402

CacheControlMode = nat_dynamo.CacheControlMode
DynamoModelConfig = nat_dynamo.DynamoModelConfig
DynamoPrefixContext = nat_dynamo.DynamoPrefixContext
make_http_client = nat_dynamo._create_httpx_client_with_dynamo_hooks

pytestmark = pytest.mark.integration

TOTAL_REQUESTS = 4
IAT_MS = 500  # ttl = 4 x 500 ms = 2 s -> NAT sends "2s"
OSL = 64
MESSAGES = [
    {"role": "system", "content": "You are the planner of a tool-using agent."},
    {"role": "user", "content": "Which tool should the agent call next?"},
]


def nat_config(base_url: str, model: str, mode: CacheControlMode) -> DynamoModelConfig:
    return DynamoModelConfig(
        model_name=model,
        base_url=f"{base_url}/v1",
        api_key="not-used",
        enable_nvext_hints=True,
        nvext_prefix_total_requests=TOTAL_REQUESTS,
        nvext_prefix_iat=IAT_MS,
        nvext_prefix_osl=OSL,
        nvext_cache_control_mode=mode,
    )


async def chat(client: openai.AsyncOpenAI, model: str, *, stream: bool) -> str:
    if not stream:
        resp = await client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4)
        return resp.choices[0].message.content or ""
    text = ""
    events = await client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=4, stream=True
    )
    async for event in events:
        for choice in event.choices:
            text += choice.delta.content or ""
    return text


def trace_records(path: Path, prefix_id: str, want: int, timeout_s: float = 15.0) -> list[dict]:
    """The processor's trace records of one prefix, waiting for the async writer."""
    deadline = time.monotonic() + timeout_s
    recs: list[dict] = []
    while time.monotonic() < deadline:
        if path.exists():
            recs = [
                r
                for r in map(json.loads, path.read_text().splitlines())
                if r.get("prefix_id") == prefix_id
            ]
            if len(recs) >= want:
                return sorted(recs, key=lambda r: r["ts"])
        time.sleep(0.2)
    raise AssertionError(f"{len(recs)} of {want} trace records for {prefix_id} in {path}")


@pytest.mark.parametrize("mode", [CacheControlMode.ALWAYS, CacheControlMode.FIRST_ONLY])
@pytest.mark.parametrize("stream", [False, True])
async def test_nat_client_through_gateway(
    stack: LocalStack, mode: CacheControlMode, stream: bool
) -> None:
    prefix = f"nat-{mode.value}-{'s' if stream else 'n'}-{uuid.uuid4().hex[:8]}"
    async with make_http_client(nat_config(stack.gateway_url, stack.model_name, mode)) as http:
        client = openai.AsyncOpenAI(
            base_url=f"{stack.gateway_url}/v1", api_key="not-used", http_client=http, max_retries=0
        )
        with DynamoPrefixContext.scope(prefix):
            for _ in range(2):
                assert await chat(client, stack.model_name, stream=stream)

    first, second = trace_records(stack.trace_path, prefix, want=2)
    for rec in (first, second):
        assert rec["total_requests"] == TOTAL_REQUESTS
        assert rec["iat_ms"] == IAT_MS
        assert rec["osl"] == OSL
        assert rec.get("error") is None
    assert first["pin_ttl_s"] == pytest.approx(2.0)  # NAT: ttl = 4 x 500 ms, sent as "2s"
    if mode is CacheControlMode.ALWAYS:
        assert second["pin_ttl_s"] == pytest.approx(2.0)
    else:  # FIRST_ONLY sends cache_control only on the first call of a prefix
        assert second.get("pin_ttl_s") is None


async def test_same_request_straight_to_stock_frontend_is_rejected(stack: LocalStack) -> None:
    """Documents why the gateway exists: Dynamo 1.6.1 refuses NAT's hints."""
    cfg = nat_config(stack.frontend_url, stack.model_name, CacheControlMode.ALWAYS)
    async with make_http_client(cfg) as http:
        client = openai.AsyncOpenAI(
            base_url=f"{stack.frontend_url}/v1", api_key="not-used", http_client=http, max_retries=0
        )
        with DynamoPrefixContext.scope(f"nat-direct-{uuid.uuid4().hex[:8]}"):
            with pytest.raises(openai.BadRequestError) as ei:
                await chat(client, stack.model_name, stream=False)
    assert ei.value.status_code == 400
    assert "prefix_id" in str(ei.value) or "unknown field" in str(ei.value)


async def test_invalid_hint_gets_openai_error_through_sdk(stack: LocalStack) -> None:
    """A bad hint is answered by the gateway in OpenAI's error shape, which the SDK parses."""
    client = openai.AsyncOpenAI(
        base_url=f"{stack.gateway_url}/v1", api_key="not-used", max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as ei:
        await client.chat.completions.create(
            model=stack.model_name,
            messages=MESSAGES,
            max_tokens=1,
            extra_body={"nvext": {"agent_hints": {"prefix_id": "p", "total_requests": 0}}},
        )
    assert ei.value.status_code == 400
    assert ei.value.body["param"] == "nvext.agent_hints.total_requests"
    assert ei.value.body["code"] == "invalid_hint"
    await client.close()
