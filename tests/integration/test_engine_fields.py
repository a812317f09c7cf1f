"""What reaches the engine: a NAT-style request through gateway -> stock frontend -> processor
arrives at the worker with the conversation id in ``agent_context.session_id`` (what Dynamo
1.6.1's engine handlers read: SGLang's session-aware radix cache, vLLM's
``generate(session_id=...)``, TensorRT-LLM's conversation affinity), the parent conversation
from ``x-dynamo-parent-session-id``, and the client's priority in ``routing.priority``.

The worker is tests/integration/recording_worker.py, a real Dynamo worker that writes down
the fields of each request it gets (the mocker does not show its requests).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.local_stack import LocalStack, StackConfig
from tests.integration.processor_util import chat, poll, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Path]]:
    path = tmp_path_factory.mktemp("engine-fields") / "requests.jsonl"
    config = StackConfig(
        workers=1,
        worker_module="tests.integration.recording_worker",
        worker_env={"AKR_TEST_RECORD_PATH": str(path)},
    )
    with running_stack(config) as stack:
        yield stack, path


def _seen(path: Path, marker: str) -> dict[str, Any]:
    """The worker's record of the request whose conversation id is ``marker``."""

    def find() -> dict[str, Any] | None:
        lines = path.read_text().splitlines() if path.exists() else []
        for rec in map(json.loads, lines):
            if ((rec.get("agent_context") or {}).get("session_id")) == marker:
                return rec
        return None

    return poll(f"the worker's record of {marker}", find, 15)


def test_nat_hints_reach_the_engine(recorded: tuple[LocalStack, Path]) -> None:
    stack, path = recorded
    chat(
        stack.gateway_url,
        stack.model_name,
        "engine fields",
        max_tokens=3,
        nvext={
            "agent_hints": {
                "prefix_id": "conv-engine-1",
                "total_requests": 4,
                "osl": 3,
                "iat": 250,
                "priority": 2,
            },
            "cache_control": {"type": "ephemeral", "ttl": "30s"},
        },
        headers={"x-dynamo-parent-session-id": "planner-7"},
    )
    rec = _seen(path, "conv-engine-1")
    print(f"\nworker received: {json.dumps(rec)}")
    assert rec["agent_context"]["session_id"] == "conv-engine-1"  # prefix_id
    assert rec["agent_context"]["parent_session_id"] == "planner-7"
    assert rec["routing"]["priority"] == 2
    # Our own hints travel as annotations too (the processor reads them; engines ignore them).
    assert any(a.startswith("akr.v1.") for a in rec["annotations"] or [])


def test_session_header_alone_reaches_the_engine(recorded: tuple[LocalStack, Path]) -> None:
    """A client that only sends Dynamo's own session header (no NAT body hints)."""
    stack, path = recorded
    chat(
        stack.gateway_url,
        stack.model_name,
        "header only",
        max_tokens=2,
        headers={"x-dynamo-session-id": "conv-engine-2"},
    )
    rec = _seen(path, "conv-engine-2")
    assert rec["agent_context"]["session_id"] == "conv-engine-2"
