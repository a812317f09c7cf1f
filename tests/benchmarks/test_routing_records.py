"""The routing benchmark's committed per-request records: compact and readable back."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from benchmarks.routing import write_records


def test_records_are_rounded_and_lose_only_the_answer_id(tmp_path: Path) -> None:
    rec = {
        "workload": "agentic",
        "arm": "ours",
        "ttft_ms": 41.123456789,
        "e2e_ms": None,
        "prompt_tokens": 3000,
        "request_id": "d1ba2a15-b4dc-4675-bf52-43cf2f257eec",
    }
    path = tmp_path / "r.jsonl.gz"
    write_records(path, [rec, {**rec, "ttft_ms": 7.0}])
    back = [json.loads(line) for line in gzip.open(path, "rt")]
    assert back[0] == {
        "workload": "agentic",
        "arm": "ours",
        "ttft_ms": 41.123,
        "e2e_ms": None,
        "prompt_tokens": 3000,
    }
    assert back[1]["ttft_ms"] == 7.0
