"""The processor's trace file validates against its schema and converts to a replay trace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest

from deploy.local_stack import REPO_ROOT, LocalStack
from processor.traces import read_records
from tests.integration.processor_util import chat, records, trace_of

pytestmark = pytest.mark.integration

SYSTEM = " ".join(f"Tool {i}: searches the corpus for entity number {i}." for i in range(40))


def _turns(stack: LocalStack, prefix_id: str, n: int) -> list[str]:
    """``n`` turns of one conversation, each prompt extending the previous one."""
    messages = [{"role": "system", "content": SYSTEM}]
    ids = []
    for turn in range(n):
        messages.append({"role": "user", "content": f"turn {turn}: look up entity {turn * 7}"})
        resp = httpx.post(
            f"{stack.gateway_url}/v1/chat/completions",
            json={
                "model": stack.model_name,
                "messages": messages,
                "max_tokens": 5,
                "nvext": {"agent_hints": {"prefix_id": prefix_id, "total_requests": n}},
            },
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        data = resp.json()
        ids.append(data["id"].split("-", 1)[1])
        messages.append({"role": "assistant", "content": data["choices"][0]["message"]["content"]})
    return ids


def test_trace_validates_and_round_trips_to_mooncake(stack: LocalStack, tmp_path: Path) -> None:
    conv = _turns(stack, "trace-conv", 3)
    other, _ = chat(stack.gateway_url, stack.model_name, "an unrelated one-shot call", stream=True)
    for rid in [*conv, other]:
        trace_of(stack, rid)

    # 1) msgspec schema (read_records raises on any line that breaks it).
    recs = records(stack)
    assert len(recs) >= 4
    by_id = {r.request_id: r for r in recs}
    turns = [by_id[rid] for rid in conv]
    assert all(t.prefix_id == "trace-conv" and t.total_requests == 3 for t in turns)
    assert [t.prompt_tokens for t in turns] == sorted(t.prompt_tokens for t in turns)
    for rec in turns:
        assert len(rec.block_hashes) == rec.prompt_tokens // rec.block_size
        assert rec.ttft_ms is not None and rec.e2e_ms is not None and rec.e2e_ms >= rec.ttft_ms
        assert rec.output_tokens == 5 and rec.finish_reason == "length"
        assert rec.candidates and rec.candidates[0].worker_id == rec.worker_id
        assert rec.prompt_token_ids is None and rec.output_token_ids is None  # no text by default

    # 2) The published JSON Schema, every line of the file.
    schema = json.loads(
        subprocess.run(
            [sys.executable, "-m", "processor.traces", "schema"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    )
    validator = jsonschema.Draft202012Validator(schema)
    lines = [json.loads(line) for line in stack.trace_path.read_text().splitlines() if line]
    assert len(lines) == len(recs)
    for line in lines:
        validator.validate(line)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**lines[0], "prompt_tokens": "many"})

    # 3) Round trip to a Mooncake replay trace.
    snapshot = tmp_path / "trace.jsonl"
    snapshot.write_bytes(stack.trace_path.read_bytes())
    out = tmp_path / "mooncake.jsonl"
    subprocess.run(
        [sys.executable, "-m", "processor.traces", "to-mooncake", str(snapshot), str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ordered = sorted(read_records(snapshot), key=lambda r: r.ts)
    assert len(rows) == len(ordered)
    stamps = [row["timestamp"] for row in rows]
    assert stamps[0] == 0 and stamps == sorted(stamps)
    for row, rec in zip(rows, ordered, strict=True):
        assert set(row) == {"timestamp", "input_length", "output_length", "hash_ids"}
        assert (row["input_length"], row["output_length"]) == (rec.prompt_tokens, rec.output_tokens)
        assert len(row["hash_ids"]) == len(rec.block_hashes)
    # Same block hash -> same replay id, across the whole trace.
    seen: dict[int, int] = {}
    for row, rec in zip(rows, ordered, strict=True):
        for h, i in zip(rec.block_hashes, row["hash_ids"], strict=True):
            assert seen.setdefault(h, i) == i
    # Turns of one conversation share their leading blocks in the replay trace too.
    conv_rows = [rows[ordered.index(t)] for t in turns]
    shared = len(conv_rows[0]["hash_ids"]) - 1  # the last block may straddle the turn boundary
    assert shared >= 3
    for row in conv_rows[1:]:
        assert row["hash_ids"][:shared] == conv_rows[0]["hash_ids"][:shared]
    lone = rows[ordered.index(by_id[other])]
    assert not set(lone["hash_ids"]) & set(conv_rows[0]["hash_ids"])
