"""The agentic_mooncake v2 reader/writer, the generator and its presets, the converter."""

from __future__ import annotations

import itertools
import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.replay.agentic import main
from benchmarks.replay.agentic_convert import convert_processor_trace
from benchmarks.replay.agentic_format import (
    read_agentic,
    read_agentic_header,
    row_request_ids,
    write_agentic,
)
from benchmarks.replay.agentic_gen import (
    AgenticParams,
    demo_preset,
    generate_agentic,
    pressure_params,
)
from benchmarks.replay.agentic_load import ENGINE_BLOCK, live_context_tokens, modelled_load
from benchmarks.replay.trace import TraceError, TraceRequest, read_mooncake
from processor.routing import block_hashes
from processor.traces import SCHEMA_VERSION, TraceRecord
from router.hints import AgentHints, HintError, parse_agent_hints
from router.jsonl_writer import JsonlWriter

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
    pinned = AgentHints(
        prefix_id="agent-1",
        total_requests=2,
        osl=64,
        iat_ms=2500,
        latency_sensitivity=1.5,
        priority=2,
        pin_type="ephemeral",
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
    assert req.hints == AgentHints(
        prefix_id="p", osl=2048, iat_ms=50, pin_type="ephemeral", pin_ttl_s=300.0
    )


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


MOONCAKE_ROW = {"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"timestamp": NaN}\n', "NaN"),
        (b'{"timestamp": Infinity}\n', "Infinity"),
        (b'{"timestamp": 1, "x": "\xff"}\n', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "not JSON"),
        (b'{"timestamp": 1' + b"0" * 5000 + b"}\n", "not JSON"),
    ],
)
def test_a_line_json_cannot_hold_is_an_error_of_that_line(
    tmp_path: Path, raw: bytes, reason: str
) -> None:
    """Not a crash without a line: both readers name the file and line."""
    for name, read in (("mooncake", read_mooncake), ("agentic", read_agentic)):
        path = tmp_path / f"{name}.jsonl"
        first = json.dumps(HEADER) if name == "agentic" else json.dumps(MOONCAKE_ROW)
        path.write_bytes(first.encode() + b"\n" + raw)
        with pytest.raises(TraceError) as err:
            read(path)
        assert (err.value.path, err.value.line) == (str(path), 2), name
        assert reason in err.value.reason, (name, err.value.reason)


def test_a_trace_error_crosses_a_process_pool_intact(tmp_path: Path) -> None:
    """The suite reads traces in worker processes: the error must reach it whole."""
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(HEADER | {"version": 1}) + "\n" + json.dumps(_row("a")) + "\n")
    with ProcessPoolExecutor(max_workers=1) as pool, pytest.raises(TraceError) as err:
        pool.submit(read_agentic, path).result()
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 1, "version")
    with ProcessPoolExecutor(max_workers=1) as pool, pytest.raises(HintError) as hint:
        pool.submit(parse_agent_hints, {"osl": -1}, None).result()
    assert hint.value.field.endswith("osl")


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


# --- the generator and its presets -------------------------------------------------------------

SMALL = AgenticParams(duration_s=120.0, session_rate_per_s=0.5, osl_median=30.0)


def test_same_seed_same_file_other_seed_other_file(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write_agentic(a, generate_agentic(7, SMALL))
    write_agentic(b, generate_agentic(7, SMALL))
    write_agentic(c, generate_agentic(8, SMALL))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert read_agentic(a) == generate_agentic(7, SMALL)


def test_sessions_grow_their_context_and_wait_for_tool_calls() -> None:
    reqs = generate_agentic(3, SMALL)
    sessions: dict[str, list[TraceRequest]] = {}
    for r in reqs:
        assert r.session_id is not None and r.hints is not None
        sessions.setdefault(r.session_id, []).append(r)
    assert len(sessions) > 20
    for turns in sessions.values():
        hints = turns[0].hints
        assert hints is not None and hints.prefix_id == turns[0].session_id
        assert hints.total_requests == len(turns)  # the turns this trace holds
        assert all(t.hints == hints for t in turns)
        assert turns[0].parent is None
        for prev, cur in itertools.pairwise(turns):
            assert cur.parent == prev.index and cur.index > prev.index
            assert 1000.0 <= cur.delay_ms <= 10000.0  # tool gaps of 1-10 s
            assert cur.arrival_ms == pytest.approx(prev.arrival_ms + cur.delay_ms)
            # the context grows by the answer and a tool result, and keeps its prefix
            assert cur.input_length > prev.input_length + prev.output_length
            assert cur.hash_ids[: len(prev.hash_ids)] == prev.hash_ids
        if hints.pin_ttl_s is not None:
            assert hints.pin_ttl_s == math.ceil(len(turns) * hints.iat_ms / 1000.0)
    pinned = sum(t[0].hints.pin_ttl_s is not None for t in sessions.values())  # type: ignore[union-attr]
    assert 0.25 < pinned / len(sessions) < 0.75


def test_hint_errors_change_the_hints_and_nothing_else(tmp_path: Path) -> None:
    exact = generate_agentic(3, SMALL)
    wrong = generate_agentic(3, replace(SMALL, hint_error_sigma=1.0))
    bare = generate_agentic(3, replace(SMALL, hinted=False))
    strip = [replace(r, hints=None) for r in exact]
    assert [replace(r, hints=None) for r in wrong] == strip
    assert bare == strip
    pairs = [(e.hints, w.hints) for e, w in zip(exact, wrong, strict=True)]
    assert all(e.prefix_id == w.prefix_id for e, w in pairs if e and w)
    assert sum(e != w for e, w in pairs) > 0.9 * len(pairs)
    # still hints a client may send: the file round-trips through the gateway's parser
    write_agentic(tmp_path / "w.jsonl", wrong)
    assert read_agentic(tmp_path / "w.jsonl") == wrong


def test_agents_of_one_type_share_their_system_prompt() -> None:
    firsts: dict[str, TraceRequest] = {}
    for r in generate_agentic(3, SMALL):
        firsts.setdefault(r.session_id or "", r)
    by_type: dict[str, list[tuple[int, ...]]] = {}
    for sid, r in firsts.items():
        by_type.setdefault(sid.split("-")[0], []).append(r.hash_ids)
    assert len(by_type) > 1
    leading = {}
    for agent, prompts in by_type.items():
        shared = prompts[0]
        for ids in prompts[1:]:
            n = 0
            while n < min(len(shared), len(ids)) and shared[n] == ids[n]:
                n += 1
            shared = shared[:n]
        assert len(shared) >= SMALL.system_prompt_blocks[0], agent
        leading[agent] = shared
    assert len({ids[0] for ids in leading.values()}) == len(leading)  # types differ


def test_pressure_preset_keeps_more_live_context_than_the_cluster_holds() -> None:
    preset = pressure_params(8, 0, num_gpu_blocks=512, max_requests=3000)
    reqs = generate_agentic(preset.seed, preset.params)
    kv = preset.workers * preset.num_gpu_blocks * ENGINE_BLOCK
    # sessions in a tool call at 0 count from their first turn in the trace, and the last
    # turns before the cut have no child: the first and last 10 s (the longest gap) ramp
    live = live_context_tokens(reqs)[10 : int(preset.params.duration_s) - 10]
    assert len(reqs) == pytest.approx(preset.expected_requests, rel=0.15)
    # the planned live context alone (no service time) exceeds the KV at all times
    assert live.mean() / kv == pytest.approx(preset.pressure, rel=0.15)
    assert live.min() > kv
    span = preset.params.duration_s * 1000.0
    assert modelled_load(reqs, 8, 512, span_ms=span) == pytest.approx(preset.load, rel=0.15)
    assert preset.load == pytest.approx(0.5, rel=0.01)
    assert max(r.input_length for r in reqs) <= 512 * ENGINE_BLOCK // 2


def test_pressure_preset_scales_with_workers_and_refuses_what_it_cannot_serve() -> None:
    small = pressure_params(8, 0, num_gpu_blocks=512, max_requests=10**9)
    large = pressure_params(64, 0, num_gpu_blocks=512, max_requests=10**9)
    assert large.params.session_rate_per_s == pytest.approx(
        8 * small.params.session_rate_per_s, rel=0.03
    )
    capped = pressure_params(64, 0, num_gpu_blocks=512, max_requests=15_000)
    assert capped.expected_requests == pytest.approx(15_000, rel=0.01)
    assert capped.params.duration_s < small.params.duration_s
    # at 1/8 of the speed, decode alone overloads the mocker at this pressure
    with pytest.raises(ValueError, match="modelled load is"):
        pressure_params(8, 0, num_gpu_blocks=128, speed=0.125)
    slow = pressure_params(8, 0, num_gpu_blocks=128, pressure=1.0, speed=0.125, decode_speedup=8)
    assert slow.load == pytest.approx(0.5, rel=0.01)


def test_demo_preset_is_small_and_under_pressure() -> None:
    preset = demo_preset(0)
    reqs = generate_agentic(preset.seed, preset.params)
    assert len({r.session_id for r in reqs}) == 24
    assert 70 <= len(reqs) <= 120
    assert preset.pressure > 1.2
    assert (
        max(r.input_length + r.output_length for r in reqs) <= preset.num_gpu_blocks * ENGINE_BLOCK
    )


def test_dynamo_replay_runs_a_generated_file(tmp_path: Path) -> None:
    """Dynamo 1.6.1's own replay takes the file as is; dependencies and reuse hold there."""
    replay = pytest.importorskip("dynamo.replay")
    preset = demo_preset(0)
    reqs = generate_agentic(preset.seed, preset.params)
    path = tmp_path / "demo.jsonl"
    write_agentic(path, reqs)
    report = replay.run_trace_replay(
        str(path),
        extra_engine_args={"engine": {"block_size": 64, "num_gpu_blocks": preset.num_gpu_blocks}},
        num_workers=preset.workers,
        router_mode="round_robin",
        trace_format="agentic_mooncake",
        execution_model="akr-test",
        capture_per_request=True,
    )
    assert report.summary["completed_requests"] == len(reqs)
    assert report.summary["incomplete_trajectories"] == 0
    by_id = {rec["request_id"]: rec for rec in report.per_request}
    ids = row_request_ids(path)
    assert sorted(by_id) == sorted(ids)
    for r in reqs:
        rec = by_id[ids[r.index]]
        assert rec["input_length"] == r.input_length
        if r.parent is not None:
            parent = by_id[ids[r.parent]]
            dispatched = max(r.arrival_ms, parent["terminal_time_ms"] + r.delay_ms)
            assert rec["dispatched_at_ms"] == pytest.approx(dispatched, abs=1e-3)
    assert sum(rec["reused_input_tokens"] for rec in report.per_request) > 0


# --- the processor's traces as an agentic trace ---------------------------------------------

BS = 64
SYSTEM = list(range(1000, 1200))  # 200 tokens shared by both sessions: 3 full blocks


def _record(
    rid: str, ts: float, tokens: list[int], prefix: str | None, **kw: object
) -> TraceRecord:
    hints = {"total_requests": 3, "iat_ms": 2000, "osl": 20, "pin_ttl_s": 6.0} if prefix else {}
    fields: dict = {
        "v": SCHEMA_VERSION,
        "ts": ts,
        "request_id": rid,
        "prompt_tokens": len(tokens),
        "block_size": BS,
        "block_hashes": block_hashes(tokens, BS),
        "prefix_id": prefix,
        "e2e_ms": 400.0,
        "output_tokens": 20,
        "worker_id": 1,
    }
    return TraceRecord(**(fields | hints | kw))


async def _processor_trace(path: Path) -> list[TraceRecord]:
    """Two agent sessions, a parallel call, a request without hints and a failed one, written
    by the processor's own writer."""
    a1 = SYSTEM + list(range(150))  # 350 tokens: 5 full blocks + 30
    a2 = a1 + list(range(5000, 5120))  # + answer and tool result: 470 tokens
    a3 = a2 + list(range(6000, 6200))
    b1 = SYSTEM + list(range(7000, 7100))
    records = [
        _record("a1", 1000.0, a1, "agent-a", e2e_ms=500.0),
        _record("b1", 1001.0, b1, "agent-b"),
        _record("b-par", 1001.2, [*b1, 9], "agent-b"),  # while b1 still runs: no parent
        _record("a2", 1002.5, a2, "agent-a"),  # 2 s after a1 finished
        _record("solo", 1003.0, list(range(300)), None),
        _record("bad", 1004.0, a1, "agent-a", error="http 500", output_tokens=0),
        _record("a3", 1005.9, a3, "agent-a"),  # 3 s after a2 finished
    ]
    writer = JsonlWriter(path)
    writer.start()
    for rec in records:
        assert writer.put(rec)
    await writer.close()
    return records


async def test_converter_turns_processor_traces_into_sessions(tmp_path: Path) -> None:
    src, dst = tmp_path / "processor.jsonl", tmp_path / "agentic.jsonl"
    await _processor_trace(src)
    done = convert_processor_trace(src, dst)
    assert (done.requests, done.sessions, done.dependent) == (6, 3, 2)
    assert done.dropped == [f"{src}:6: http 500"]
    reqs = {r.session_id: [] for r in read_agentic(dst)}
    for r in read_agentic(dst):
        reqs[r.session_id].append(r)  # type: ignore[index]
    assert read_agentic_header(dst)["block_size"] == BS
    a1, a2, a3 = reqs["agent-a"]
    assert a1.parent is None and a1.arrival_ms == 0.0
    assert (a2.parent, a2.delay_ms, a2.arrival_ms) == (a1.index, 2000.0, 2000.0)
    assert (a3.parent, a3.delay_ms) == (a2.index, pytest.approx(3000.0))
    assert a3.arrival_ms == pytest.approx(5000.0)  # closed loop: parent's + the gap
    # the worker's block hashes: the context keeps its full blocks, the partial one is unique
    assert a2.hash_ids[:5] == a1.hash_ids[:5] and a1.hash_ids[5] not in a2.hash_ids
    assert (a1.input_length, len(a1.hash_ids), len(a2.hash_ids)) == (350, 6, 8)
    b1, b_par = reqs["agent-b"]
    assert b1.hash_ids[:3] == a1.hash_ids[:3] and b1.hash_ids[3] != a1.hash_ids[3]
    assert b_par.parent is None and b_par.arrival_ms == pytest.approx(1200.0)
    assert a1.hints == AgentHints("agent-a", 3, 20, 2000, None, None, "ephemeral", 6.0)
    (solo,) = [r for s, rs in reqs.items() if s not in ("agent-a", "agent-b") for r in rs]
    assert solo.hints is None and solo.parent is None
    kept = convert_processor_trace(src, tmp_path / "kept.jsonl", keep_schedule=True)
    assert kept.requests == 6
    assert [r.arrival_ms for r in read_agentic(tmp_path / "kept.jsonl")][-1] == pytest.approx(
        5900.0
    )


async def test_dynamo_replay_runs_a_converted_file(tmp_path: Path) -> None:
    replay = pytest.importorskip("dynamo.replay")
    src, dst = tmp_path / "processor.jsonl", tmp_path / "agentic.jsonl"
    await _processor_trace(src)
    convert_processor_trace(src, dst)
    report = replay.run_trace_replay(
        str(dst),
        extra_engine_args={"engine": {"block_size": BS, "num_gpu_blocks": 256}},
        num_workers=1,
        router_mode="round_robin",
        trace_format="agentic_mooncake",
        execution_model="akr-test",
        capture_per_request=True,
    )
    assert report.summary["completed_requests"] == 6
    reused = {rec["request_id"]: rec["reused_input_tokens"] for rec in report.per_request}
    assert reused["agent-a:1"] == 5 * BS  # a1's full blocks, on the same single worker


@pytest.mark.parametrize(
    ("mangle", "line", "field"),
    [
        (lambda lines: [*lines[:2], "{oops\n", *lines[2:]], 3, "<line>"),
        (lambda lines: [*lines[:-1], lines[-1].rstrip("\n")[:-5]], 7, "<line>"),
        (
            lambda lines: [
                lines[0].replace('"prompt_tokens":350', '"prompt_tokens":"350"'),
                *lines[1:],
            ],
            1,
            "prompt_tokens",
        ),
        (
            lambda lines: [
                lines[0].replace('"prompt_tokens":350', '"prompt_tokens":900'),
                *lines[1:],
            ],
            1,
            "block_hashes",
        ),
        (
            lambda lines: [
                lines[0],
                lines[1].replace('"block_size":64', '"block_size":16'),
                *lines[2:],
            ],
            2,
            "block_size",
        ),
    ],
)
async def test_converter_names_the_bad_line_and_field(
    tmp_path: Path, mangle: object, line: int, field: str
) -> None:
    src = tmp_path / "processor.jsonl"
    await _processor_trace(src)
    lines = src.read_text().splitlines(keepends=True)
    src.write_text("".join(mangle(lines)))  # type: ignore[operator]
    with pytest.raises(TraceError) as err:
        convert_processor_trace(src, tmp_path / "out.jsonl")
    assert (err.value.path, err.value.line, err.value.field) == (str(src), line, field)


# --- the CLI -------------------------------------------------------------------------------


async def test_cli_generates_converts_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = tmp_path / "demo.jsonl"
    assert main(["generate", "--preset", "demo", "--seed", "0", "--out", str(demo)]) == 0
    assert read_agentic(demo) == generate_agentic(0, demo_preset(0).params)
    recorded = read_agentic_header(demo)["akr_preset"]
    assert (recorded["workers"], recorded["num_gpu_blocks"], recorded["name"]) == (8, 128, "demo")
    printed = json.loads(capsys.readouterr().out)
    assert printed["requests"] == len(read_agentic(demo)) and printed["pressure"] > 1.2

    bad = tmp_path / "slow.jsonl"
    assert main(["generate", "--workers", "8", "--speed", "0.125", "--out", str(bad)]) == 2
    assert "modelled load is" in capsys.readouterr().err and not bad.exists()

    src, dst = tmp_path / "processor.jsonl", tmp_path / "agentic.jsonl"
    await _processor_trace(src)
    assert main(["convert", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "6 requests, 3 sessions, 2 after a tool gap" in out and f"{src}:6: http 500" in out

    assert main(["stats", str(dst), "--workers", "1", "--num-gpu-blocks", "64"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 6
    src.write_text("{broken\n")
    assert main(["convert", str(src), str(dst)]) == 2
    assert f"{src}:1: field '<line>'" in capsys.readouterr().err
