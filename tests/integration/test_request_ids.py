"""One request, one id: the answer's x-request-id, the gateway's trace record and the processor's,
on the real stack (gateway -> stock frontend -> processor -> mocker worker)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from deploy.local_stack import StackConfig
from tests.integration.processor_util import poll, records, running_stack

pytestmark = pytest.mark.integration

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _send(base: str, model: str, sent: str | None, stream: bool) -> str:
    """One chat completion read to its end; the x-request-id its answer carries."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "name this request"}],
        "max_tokens": 3,
        "stream": stream,
    }
    headers = {} if sent is None else {"x-request-id": sent}
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as resp:
        resp.read()
        assert resp.status_code == 200, resp.text
        return resp.headers["x-request-id"]


def _gateway_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]  # last may be partial


def test_the_same_id_in_the_answer_and_both_trace_files(tmp_path: Path) -> None:
    """With the client's id (kept), without one and with an invalid one (a new UUID4 each),
    streamed and not: the id the client got back is the gateway record's request_id and the
    processor record's x_request_id, and each names that request only."""
    gateway_trace = tmp_path / "gateway.jsonl"
    config = StackConfig(workers=1, gateway_env={"AKR_GATEWAY_TRACE_PATH": str(gateway_trace)})
    with running_stack(config) as stack:
        answered: dict[str, str | None] = {}
        for stream in (False, True):
            for sent in (f"client-id-{stream}", None, "not an id"):
                rid = _send(stack.gateway_url, stack.model_name, sent, stream)
                answered[rid] = sent
        assert len(answered) == 6  # six different ids
        for rid, sent in answered.items():
            if sent is not None and sent.startswith("client-id-"):
                assert rid == sent
            else:
                assert UUID4.fullmatch(rid), (rid, sent)

        gateway = poll(
            "gateway records of every request",
            lambda: (
                (recs := _gateway_records(gateway_trace))
                and {r["request_id"] for r in recs} >= answered.keys()
                and recs
            ),
            15.0,
        )
        processor = poll(
            "processor records of every request",
            lambda: (
                (recs := records(stack))
                and {r.x_request_id for r in recs} >= answered.keys()
                and recs
            ),
            15.0,
        )
    for rid in answered:
        (gw,) = [r for r in gateway if r["request_id"] == rid]
        (proc,) = [r for r in processor if r.x_request_id == rid]
        assert gw["status"] == 200
        assert proc.output_tokens == 3 and proc.error is None
