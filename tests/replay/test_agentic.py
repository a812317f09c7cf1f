"""The agentic_mooncake v2 reader/writer, the generator and its presets, the converter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.replay.agentic_format import read_agentic, read_agentic_header, write_agentic
from benchmarks.replay.trace import Hints, TraceError, TraceRequest

HEADER = {
    "schema": "dynamo.agentic_mooncake",
    "version": 2,
    "block_size": 512,
    "hash_id_scope": "local",
    "source": {"format": "test", "digest": "x"},
}


def _row(rid: str, session: str = "s", deps: list | None = None, **kw: object) -> dict:
    row = {
        "request_id": rid,
        "play_id": session,
        "session_id": session,
        "model": "m",
        "input_length": 1024,
        "output_length": 8,
        "hash_ids": [1, 2],
        "not_before_ms": 0.0,
    }
    if deps is not None:
        row["dependencies"] = deps
    row.update(kw)
    return row


def _dep(parent: str, delay: float = 100.0, **kw: object) -> dict:
    return {
        "request_id": parent,
        "trigger": "completion",
        "delay_ms": delay,
        "relation": "sequence",
    } | kw


def _write(path: Path, *rows: dict, header: dict = HEADER) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in (header, *rows)))
    return path


def _requests() -> list[TraceRequest]:
    pinned = Hints(
        prefix_id="agent-1",
        total_requests=2,
        osl=64,
        iat_ms=2500.0,
        latency_sensitivity=1.5,
        priority=2,
        pin_ttl_s=5.0,
    )
    return [
        TraceRequest(0, 0.0, 1000, 40, (7, 8), 512, pinned, "agent-1"),
        TraceRequest(1, 10.5, 600, 20, (9, 10), 512, None, "solo"),
        TraceRequest(2, 2500.0, 1600, 50, (7, 8, 11, 12), 512, pinned, "agent-1", 0, 2500.0),
    ]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_agentic(path, _requests())
    assert read_agentic(path) == _requests()
    header = read_agentic_header(path)
    assert header["block_size"] == 512 and header["schema"] == "dynamo.agentic_mooncake"
    rows = [json.loads(x) for x in path.read_text().splitlines()[1:]]
    # the hints ride as a NAT client sends them; Dynamo ignores the field
    assert rows[0]["nvext"] == {
        "agent_hints": {
            "prefix_id": "agent-1",
            "total_requests": 2,
            "osl": 64,
            "iat": 2500,
            "latency_sensitivity": 1.5,
            "priority": 2,
        },
        "cache_control": {"type": "ephemeral", "ttl": "5s"},
    }
    assert rows[2]["dependencies"] == [
        {
            "request_id": "agent-1:0",
            "trigger": "completion",
            "delay_ms": 2500.0,
            "relation": "sequence",
        }
    ]
    assert rows[2]["play_id"] == rows[0]["play_id"] != rows[1]["play_id"]


def test_arrivals_shift_to_the_earliest_not_before_like_dynamo(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "t.jsonl", _row("a", not_before_ms=100.0), _row("b", not_before_ms=50.0)
    )
    assert [r.arrival_ms for r in read_agentic(path)] == [50.0, 0.0]


def test_hints_are_parsed_by_the_gateway_parser(tmp_path: Path) -> None:
    nvext = {
        "agent_hints": {"prefix_id": "p", "osl": "HIGH", "iat": "LOW", "extra": 1},
        "cache_control": {"type": "ephemeral"},
    }
    path = _write(tmp_path / "t.jsonl", _row("a", nvext=nvext))
    (req,) = read_agentic(path)
    # NAT's levels and the default pin TTL (5 min) come from router.hints
    assert req.hints == Hints(prefix_id="p", osl=2048, iat_ms=50.0, pin_ttl_s=300.0)


@pytest.mark.parametrize(
    ("lines", "line", "field", "reason"),
    [
        ([HEADER, "{not json"], 2, "<line>", "not JSON"),
        ([HEADER, _row("a"), json.dumps(_row("b"))[:40]], 3, "<line>", "truncated"),
        ([HEADER, _row("a", input_length="1024")], 2, "input_length", "integer"),
        ([HEADER, _row("a", output_length=0)], 2, "output_length", ">= 1"),
        ([HEADER, _row("a", hash_ids=[1])], 2, "hash_ids", "needs 2 ids"),
        ([HEADER, _row("a", hash_ids=[1, -2])], 2, "hash_ids", "integers"),
        ([HEADER, _row("a", not_before_ms=None)], 2, "not_before_ms", "number"),
        ([HEADER, _row("a", session_id=3)], 2, "session_id", "string"),
        (
            [HEADER, _row("a"), _row("b", deps=[_dep("zz")])],
            3,
            "dependencies[0].request_id",
            "unknown",
        ),
        ([HEADER, _row("a"), _row("a")], 3, "request_id", "already used on line 2"),
        (
            [HEADER, _row("a", deps=[_dep("b")]), _row("b", deps=[_dep("a")])],
            2,
            "dependencies",
            "cycle",
        ),
        ([HEADER, _row("a", deps=[_dep("a")])], 2, "dependencies", "cycle"),
        (
            [HEADER, _row("a"), _row("b"), _row("c", deps=[_dep("a"), _dep("b")])],
            4,
            "dependencies",
            "join",
        ),
        (
            [HEADER, _row("a"), _row("b", deps=[_dep("a", trigger="dispatch")])],
            3,
            "dependencies[0].trigger",
            "completion",
        ),
        (
            [HEADER, _row("a"), _row("b", deps=[_dep("a", delay_ms=-1)])],
            3,
            "dependencies[0].delay_ms",
            ">= 0",
        ),
        (
            [HEADER, _row("a"), _row("b", session="t", deps=[_dep("a")])],
            3,
            "dependencies[0].request_id",
            "another play",
        ),
        (
            [HEADER, _row("a", nvext={"agent_hints": {"total_requests": 0}})],
            2,
            "nvext.agent_hints.total_requests",
            "between",
        ),
        (
            [HEADER, _row("a", nvext={"cache_control": {"type": "ephemeral", "ttl": "soon"}})],
            2,
            "nvext.cache_control.ttl",
            "duration",
        ),
        ([HEADER | {"version": 1}, _row("a")], 1, "version", "expected 2"),
        ([HEADER | {"block_size": 0}, _row("a")], 1, "block_size", ">= 1"),
        ([{k: v for k, v in HEADER.items() if k != "source"}, _row("a")], 1, "source", "object"),
    ],
)
def test_a_bad_line_names_file_line_and_field(
    tmp_path: Path, lines: list, line: int, field: str, reason: str
) -> None:
    path = tmp_path / "bad.jsonl"
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    if reason == "truncated":
        text = text.rstrip("\n")  # the last line ends mid-object, without its newline
    path.write_text(text)
    with pytest.raises(TraceError) as err:
        read_agentic(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), line, field)
    assert reason in err.value.reason
    assert f"{path}:{line}:" in str(err.value)


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(TraceError, match="empty file"):
        read_agentic(path)


def test_writer_refuses_what_dynamo_would_reject(tmp_path: Path) -> None:
    bad = [TraceRequest(0, 0.0, 1024, 8, (1,), 512)]
    with pytest.raises(ValueError, match="need 2"):
        write_agentic(tmp_path / "t.jsonl", bad)
    later_parent = [
        TraceRequest(0, 0.0, 512, 8, (1,), 512, parent=1),
        TraceRequest(1, 0.0, 512, 8, (1,), 512),
    ]
    with pytest.raises(ValueError, match="earlier request"):
        write_agentic(tmp_path / "t.jsonl", later_parent)
