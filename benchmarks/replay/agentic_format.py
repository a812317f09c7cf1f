"""Dynamo's ``agentic_mooncake`` v2 trace format: reader and writer.

Why this format: Dynamo 1.6.1's own replay (``run_trace_replay(...,
trace_format="agentic_mooncake", execution_model=...)``) runs it, so one file feeds both our
simulator and Dynamo's. What 1.6.1 accepts (checked against the binary):

- line 1, the header: ``{"schema": "dynamo.agentic_mooncake", "version": 2, "block_size": B,
  "hash_id_scope": "local", "source": {"format": str, "digest": str}}``; ``block_size`` is the
  number of tokens per hash id (it replaces ``trace_block_size``).
- then one row per request: ``request_id`` (unique), ``play_id``, ``session_id``, ``model``
  (strings), ``input_length``, ``output_length``, ``hash_ids`` (exactly ceil(input_length / B)
  ids; a shared id means the same tokens, a partial last block is a prefix of the full one),
  ``not_before_ms``, ``dependencies`` (``[{"request_id", "trigger": "completion"|"dispatch",
  "delay_ms", "relation": "sequence"|"spawn"|"join"|"replay_barrier"}]``, same play only).
- a request is dispatched at max(not_before_ms, each dependency's parent completion + delay_ms);
  times are shifted so that the smallest ``not_before_ms`` is 0. Hash ids are shared across
  plays (the same id in two plays reuses the cache), despite ``hash_id_scope: local``.
- unknown fields are ignored: our hints ride in ``nvext`` exactly as a NAT client sends them
  (``{"agent_hints": {...}, "cache_control": {"type": "ephemeral", "ttl": "30s"}}``) and are
  validated by ``router.hints.parse_agent_hints``, the gateway's own parser.

We read the subset a ``TraceRequest`` can express: at most one dependency per request, with
trigger ``completion`` (relation ``sequence`` or ``spawn``). Joins, dispatch triggers, unknown
parents and cycles are errors, as is any malformed line; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.replay.trace import TraceError, TraceRequest, _lines
from router.hints import AgentHints, HintError, parse_agent_hints

SCHEMA = "dynamo.agentic_mooncake"
VERSION = 2
DEFAULT_MODEL = "agentic"  # the row's model; Dynamo's replay needs execution_model= anyway
_DEP_RELATIONS = ("sequence", "spawn")  # both mean "after the parent's completion + delay"
_U64 = 2**64


def _num(obj: dict, key: str, path: Path, line: int) -> float:
    v = obj.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise TraceError(path, line, key, f"expected a finite number >= 0, got {v!r}")
    return float(v)


def _int(obj: dict, key: str, path: Path, line: int, minimum: int) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise TraceError(path, line, key, f"expected an integer >= {minimum}, got {v!r}")
    return v


def _str(obj: dict, key: str, path: Path, line: int) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v:
        raise TraceError(path, line, key, f"expected a non-empty string, got {v!r}")
    return v


def _check_header(obj: dict, path: Path) -> int:
    if obj.get("schema") != SCHEMA:
        raise TraceError(path, 1, "schema", f"expected {SCHEMA!r}, got {obj.get('schema')!r}")
    if obj.get("version") != VERSION:
        raise TraceError(path, 1, "version", f"expected {VERSION}, got {obj.get('version')!r}")
    block = _int(obj, "block_size", path, 1, minimum=1)
    if obj.get("hash_id_scope") != "local":
        raise TraceError(
            path, 1, "hash_id_scope", f"expected 'local', got {obj.get('hash_id_scope')!r}"
        )
    src = obj.get("source")
    if not isinstance(src, dict):
        raise TraceError(path, 1, "source", "expected an object with 'format' and 'digest'")
    for key in ("format", "digest"):
        if not isinstance(src.get(key), str):
            raise TraceError(path, 1, f"source.{key}", f"expected a string, got {src.get(key)!r}")
    return block


def _hints(row: dict, path: Path, line: int) -> AgentHints | None:
    nvext = row.get("nvext")
    if nvext is None:
        return None
    if not isinstance(nvext, dict):
        raise TraceError(path, line, "nvext", "expected an object")
    try:
        hints = parse_agent_hints(nvext.get("agent_hints"), nvext.get("cache_control"))
    except HintError as e:
        raise TraceError(path, line, e.field, e.reason) from None
    return None if hints.is_empty() else hints


def _hash_ids(row: dict, isl: int, block: int, path: Path, line: int) -> tuple[int, ...]:
    hashes = row.get("hash_ids")
    if not isinstance(hashes, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) and 0 <= h < _U64 for h in hashes
    ):
        raise TraceError(path, line, "hash_ids", "expected a list of integers in [0, 2**64)")
    need = -(-isl // block)
    if len(hashes) != need:
        raise TraceError(
            path,
            line,
            "hash_ids",
            f"input_length {isl} at block_size {block} needs {need} ids, got {len(hashes)}",
        )
    return tuple(hashes)


def _dependency(row: dict, path: Path, line: int) -> tuple[str, float] | None:
    deps = row.get("dependencies", [])
    if not isinstance(deps, list):
        raise TraceError(path, line, "dependencies", "expected a list")
    if not deps:
        return None
    if len(deps) > 1:
        raise TraceError(
            path, line, "dependencies", f"{len(deps)} parents (a join) are not supported"
        )
    dep = deps[0]
    if not isinstance(dep, dict):
        raise TraceError(path, line, "dependencies[0]", "expected an object")
    parent = dep.get("request_id")
    if not isinstance(parent, str) or not parent:
        raise TraceError(
            path, line, "dependencies[0].request_id", f"expected a string, got {parent!r}"
        )
    if dep.get("trigger") != "completion":
        raise TraceError(
            path,
            line,
            "dependencies[0].trigger",
            f"only 'completion' is supported, got {dep.get('trigger')!r}",
        )
    if dep.get("relation") not in _DEP_RELATIONS:
        raise TraceError(
            path,
            line,
            "dependencies[0].relation",
            f"expected one of {list(_DEP_RELATIONS)}, got {dep.get('relation')!r}",
        )
    delay = dep.get("delay_ms")
    if (
        not isinstance(delay, (int, float))
        or isinstance(delay, bool)
        or not math.isfinite(delay)
        or delay < 0
    ):
        raise TraceError(
            path, line, "dependencies[0].delay_ms", f"expected a number >= 0, got {delay!r}"
        )
    return parent, float(delay)


def read_agentic_header(path: Path | str) -> dict[str, Any]:
    """The header line, validated (block_size, source, ...)."""
    path = Path(path)
    for n, obj in _lines(path):
        if n != 1:
            raise TraceError(path, 1, "<header>", "line 1 is empty; the header must be line 1")
        _check_header(obj, path)
        return obj
    raise TraceError(path, 1, "<header>", "empty file")


def read_agentic(path: Path | str) -> list[TraceRequest]:
    """Every request of an agentic_mooncake v2 file, in file order (``index`` = row number,
    from 0). ``arrival_ms`` is ``not_before_ms`` shifted so the earliest is 0, as Dynamo does;
    ``parent``/``delay_ms`` come from the dependency."""
    path = Path(path)
    block = 0
    rows: list[tuple[int, dict, str, tuple[str, float] | None]] = []
    ids: dict[str, int] = {}
    for n, obj in _lines(path):
        if not block:
            if n != 1:
                raise TraceError(path, 1, "<header>", "line 1 is empty; the header must be line 1")
            block = _check_header(obj, path)
            continue
        rid = _str(obj, "request_id", path, n)
        if rid in ids:
            raise TraceError(
                path, n, "request_id", f"{rid!r} already used on line {rows[ids[rid]][0]}"
            )
        for key in ("play_id", "session_id", "model"):
            _str(obj, key, path, n)
        ids[rid] = len(rows)
        rows.append((n, obj, rid, _dependency(obj, path, n)))
    if not block:
        raise TraceError(path, 1, "<header>", "empty file")
    parents: list[int | None] = []
    for n, obj, _rid, dep in rows:
        if dep is None:
            parents.append(None)
            continue
        p = ids.get(dep[0])
        if p is None:
            raise TraceError(path, n, "dependencies[0].request_id", f"unknown request {dep[0]!r}")
        if rows[p][1].get("play_id") != obj["play_id"]:
            raise TraceError(
                path,
                n,
                "dependencies[0].request_id",
                f"parent {dep[0]!r} is in another play (Dynamo rejects that)",
            )
        parents.append(p)
    _check_acyclic(path, rows, parents)
    base = min((_num(obj, "not_before_ms", path, n) for n, obj, _, _ in rows), default=0.0)
    out: list[TraceRequest] = []
    for i, (n, obj, _rid, dep) in enumerate(rows):
        isl = _int(obj, "input_length", path, n, minimum=1)
        out.append(
            TraceRequest(
                index=i,
                arrival_ms=_num(obj, "not_before_ms", path, n) - base,
                input_length=isl,
                output_length=_int(obj, "output_length", path, n, minimum=1),
                hash_ids=_hash_ids(obj, isl, block, path, n),
                hash_block=block,
                hints=_hints(obj, path, n),
                session_id=obj["session_id"],
                parent=parents[i],
                delay_ms=0.0 if dep is None else dep[1],
            )
        )
    return out


def _check_acyclic(
    path: Path, rows: Sequence[tuple[int, dict, str, Any]], parents: list[int | None]
) -> None:
    """With one parent per request, a cycle is a parent chain that comes back to itself."""
    state = [0] * len(parents)  # 0 unseen, 1 on the current chain, 2 reaches a root
    for start in range(len(parents)):
        chain: list[int] = []
        i: int | None = start
        while i is not None and state[i] == 0:
            state[i] = 1
            chain.append(i)
            i = parents[i]
        if i is not None and state[i] == 1:
            members = ", ".join(rows[j][2] for j in chain[chain.index(i) :])
            raise TraceError(
                path, rows[i][0], "dependencies", f"dependency cycle through {members}"
            )
        for j in chain:
            state[j] = 2


def row_request_ids(path: Path | str) -> list[str]:
    """The ``request_id`` of every row in file order (Dynamo's per-request records carry it)."""
    return [obj["request_id"] for n, obj in _lines(Path(path)) if n > 1]


def nvext_of(hints: AgentHints) -> dict[str, Any]:
    """``nvext`` as a NAT client sends it: agent_hints, plus cache_control when pinned."""
    ah: dict[str, Any] = {}
    if hints.prefix_id is not None:
        ah["prefix_id"] = hints.prefix_id
    if hints.total_requests is not None:
        ah["total_requests"] = hints.total_requests
    if hints.osl is not None:
        ah["osl"] = hints.osl
    if hints.iat_ms is not None:
        ah["iat"] = max(1, round(hints.iat_ms))
    if hints.latency_sensitivity is not None:
        ah["latency_sensitivity"] = hints.latency_sensitivity
    if hints.priority is not None:
        ah["priority"] = hints.priority
    out: dict[str, Any] = {"agent_hints": ah} if ah else {}
    if hints.pin_ttl_s is not None:
        ttl = f"{hints.pin_ttl_s:.9f}".rstrip("0").rstrip(".")
        out["cache_control"] = {"type": "ephemeral", "ttl": f"{ttl}s"}
    return out


def _rows(requests: Sequence[TraceRequest], model: str) -> Iterable[dict[str, Any]]:
    turns: dict[str, int] = {}
    rids: list[str] = []
    plays: list[str] = []
    for i, r in enumerate(requests):
        if r.index != i:
            raise ValueError(f"request {i} has index {r.index}; indices must be 0..n-1 in order")
        session = r.session_id if r.session_id is not None else f"req{i}"
        turn = turns.get(session, 0)
        turns[session] = turn + 1
        rids.append(f"{session}:{turn}")
        if r.parent is not None and not 0 <= r.parent < i:
            raise ValueError(f"request {i}: parent {r.parent} must be an earlier request")
        # Dynamo needs a dependency inside one play: a play is a whole dependency chain.
        plays.append(plays[r.parent] if r.parent is not None else session)
        need = -(-r.input_length // r.hash_block)
        if len(r.hash_ids) != need:
            raise ValueError(
                f"request {i}: {len(r.hash_ids)} hash ids, {r.input_length} tokens need {need}"
            )
        row: dict[str, Any] = {
            "request_id": rids[i],
            "play_id": plays[i],
            "session_id": session,
            "model": model,
            "input_length": r.input_length,
            "output_length": r.output_length,
            "hash_ids": list(r.hash_ids),
            "not_before_ms": r.arrival_ms,
        }
        if r.parent is not None:
            row["dependencies"] = [
                {
                    "request_id": rids[r.parent],
                    "trigger": "completion",
                    "delay_ms": r.delay_ms,
                    "relation": "sequence",
                }
            ]
        if r.hints is not None:
            nvext = nvext_of(r.hints)
            if nvext:
                row["nvext"] = nvext
        yield row


def write_agentic(
    path: Path | str,
    requests: Sequence[TraceRequest],
    *,
    source: str = "akr",
    model: str = DEFAULT_MODEL,
    extra_header: dict[str, Any] | None = None,
) -> None:
    """Write ``requests`` (indices 0..n-1, parents before children, one hash block size) as an
    agentic_mooncake v2 file. Request ids are ``<session>:<turn>``; the header's digest is the
    sha256 of the rows, so equal traces give byte-identical files. ``extra_header`` adds
    fields to the header (Dynamo ignores them), e.g. the cluster a preset was sized for."""
    blocks = {r.hash_block for r in requests}
    if len(blocks) > 1:
        raise ValueError(f"one hash block size per file, got {sorted(blocks)}")
    block = blocks.pop() if blocks else 512
    body = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in _rows(requests, model))
    header = {
        "schema": SCHEMA,
        "version": VERSION,
        "block_size": block,
        "hash_id_scope": "local",
        "source": {"format": source, "digest": hashlib.sha256(body.encode()).hexdigest()},
        **(extra_header or {}),
    }
    Path(path).write_text(json.dumps(header, separators=(",", ":")) + "\n" + body, encoding="utf-8")
