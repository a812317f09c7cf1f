"""Trace requests as every replay arm reads them, and the Mooncake JSONL reader.

A trace line becomes a ``TraceRequest``. Agent traffic adds the client's hints (the router's
own ``AgentHints``, as the gateway hands them to the processor) and a dependency: a turn that
waits for its parent's answer plus a tool-call gap.
A malformed line is a ``TraceError`` naming the file, the line and the field; nothing is
skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from router.hints import AgentHints

MOONCAKE_HASH_BLOCK = 512  # tokens per hash_id in the Mooncake traces
# The public Mooncake FAST'25 conversation trace is not part of the repository: the replay
# suite, the live benchmark's Mooncake workload and their tests read it beside the checkout.
MOONCAKE_TRACE = (
    Path(__file__).resolve().parents[3] / "shared" / "traces" / "mooncake_conversation_trace.jsonl"
)
MOONCAKE_SOURCE = "kvcache-ai/Mooncake, FAST25-release/traces/conversation_trace.jsonl"


def mooncake_trace(path: Path | None = None) -> Path:
    """``path`` (default: the shared trace) if it exists; else a ``FileNotFoundError`` saying
    where the trace belongs and where to get it."""
    path = MOONCAKE_TRACE if path is None else path
    if not path.is_file():
        raise FileNotFoundError(
            f"the Mooncake conversation trace is missing: {path} "
            f"(save {MOONCAKE_SOURCE} there; README.md, 'Two commands')"
        )
    return path


class TraceError(ValueError):
    """A trace line that cannot be replayed: names the file, line and field."""

    def __init__(self, path: Path | str, line: int, field: str, reason: str) -> None:
        super().__init__(f"{path}:{line}: field {field!r}: {reason}")
        self.path, self.line, self.field, self.reason = str(path), line, field, reason

    def __reduce__(self) -> tuple[type[TraceError], tuple[str, int, str, str]]:
        """Rebuilt from its own arguments: raised in a replay worker process, it reaches the
        suite naming its file, line and field (unpicklable, it broke the whole pool)."""
        return (TraceError, (self.path, self.line, self.field, self.reason))


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace. ``hash_ids`` are the trace's prompt blocks of
    ``hash_block`` tokens each; a request with a ``parent`` arrives ``delay_ms`` after the
    parent's last token (and never before ``arrival_ms``)."""

    index: int
    arrival_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]
    hash_block: int = MOONCAKE_HASH_BLOCK
    hints: AgentHints | None = None
    session_id: str | None = None
    parent: int | None = None  # index of the request this one waits for
    delay_ms: float = 0.0  # tool-call gap after the parent finishes


def _int(obj: dict, key: str, path: Path, line: int, minimum: int = 0) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise TraceError(path, line, key, f"expected an integer, got {v!r}")
    if v < minimum:
        raise TraceError(path, line, key, f"must be >= {minimum}, got {v}")
    return v


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _lines(path: Path) -> Iterator[tuple[int, dict]]:
    """Each non-blank line's object; bytes that are not UTF-8, NaN/Infinity and nesting
    too deep for the parser are errors of that line, like any other malformed JSON."""
    with open(path, "rb") as f:
        for n, raw_bytes in enumerate(f, 1):
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TraceError(path, n, "<line>", f"not UTF-8 (byte {e.start})") from None
            if not raw.strip():
                continue
            if not raw.endswith("\n") and raw.strip()[-1:] != "}":
                raise TraceError(path, n, "<line>", "truncated line")
            try:
                obj = json.loads(raw, parse_constant=_no_constant)
            except json.JSONDecodeError as e:
                raise TraceError(path, n, "<line>", f"not JSON ({e.msg})") from None
            except ValueError as e:
                raise TraceError(path, n, "<line>", f"not JSON ({e})") from None
            except RecursionError:
                raise TraceError(path, n, "<line>", "not JSON (nested too deeply)") from None
            if not isinstance(obj, dict):
                raise TraceError(path, n, "<line>", "not a JSON object")
            yield n, obj


def read_mooncake(path: Path | str, limit: int | None = None) -> list[TraceRequest]:
    """The Mooncake JSONL trace (timestamp ms, input_length, output_length, hash_ids)."""
    path = Path(path)
    out: list[TraceRequest] = []
    for n, obj in _lines(path):
        if limit is not None and len(out) >= limit:
            break
        ts = obj.get("timestamp")
        if (
            not isinstance(ts, (int, float))
            or isinstance(ts, bool)
            or not math.isfinite(ts)
            or ts < 0
        ):
            raise TraceError(path, n, "timestamp", f"expected a number >= 0, got {ts!r}")
        hashes = obj.get("hash_ids")
        if not isinstance(hashes, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) for h in hashes
        ):
            raise TraceError(path, n, "hash_ids", "expected a list of integers")
        isl = _int(obj, "input_length", path, n, minimum=1)
        if len(hashes) * MOONCAKE_HASH_BLOCK < isl - MOONCAKE_HASH_BLOCK + 1:
            raise TraceError(path, n, "hash_ids", f"{len(hashes)} blocks cannot cover {isl}")
        out.append(
            TraceRequest(
                index=len(out),
                arrival_ms=float(ts),
                input_length=isl,
                output_length=_int(obj, "output_length", path, n, minimum=1),
                hash_ids=tuple(hashes),
            )
        )
    return out
