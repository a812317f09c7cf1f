"""Reading a processor trace back: a bad line names its file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processor.traces import SCHEMA_VERSION, main, read_records

GOOD = {
    "v": SCHEMA_VERSION,
    "ts": 1.0,
    "request_id": "a",
    "prompt_tokens": 64,
    "block_size": 64,
    "block_hashes": [1],
}


def test_a_line_that_breaks_the_schema_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    lines = [GOOD, GOOD | {"ttft_ms": "slow"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ValueError) as err:
        list(read_records(path))
    assert f"{path}:2:" in str(err.value) and "ttft_ms" in str(err.value)


def test_the_converter_reports_a_bad_line_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"v": 1, "ts"\n')
    with pytest.raises(SystemExit) as done:
        main(["to-mooncake", str(path), str(tmp_path / "out.jsonl")])
    assert str(done.value).startswith(f"error: {path}:2:")
