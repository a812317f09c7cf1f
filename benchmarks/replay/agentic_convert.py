"""The processor's own request traces (``processor.traces.TraceRecord`` JSONL) as an agentic
trace, so an operator can replay production traffic against other routers.

What the processor records and how it maps:

- sessions: one per ``prefix_id``; a request without one is a session of its own.
- arrival: ``ts`` (unix s at arrival), relative to the first request.
- dependencies: a request waits for the request of its prefix that finished last before it
  arrived (finish = ``ts`` + ``e2e_ms``), ``delay_ms`` = the gap between that finish and its
  arrival (the tool call). A request that arrived while all earlier ones of its prefix were
  still running (parallel calls) has no parent and keeps its recorded time.
- prompt identity: the processor stores Dynamo's hash of each full block of the prompt at the
  worker block size (``block_hashes``, per block, not chained), not the tokens. Those become
  the hash ids, renumbered densely in order of first use, and the header's block size is the
  worker's; a partial last block gets an id of its own, used once (the engine cannot reuse a
  partial block anyway). Dynamo's replay and ours rebuild the prompts from the ids, so equal
  leading blocks are shared exactly as the worker shared them.
- hints: the record's prefix_id, total_requests, iat_ms, osl, latency_sensitivity, priority
  and pin ttl, as the processor's router used them: the client's hints, with the router's
  defaults and max_tokens (as osl) where the client sent none (``TraceRecord``'s schema).
- failed requests (``error`` set, or no prompt or no output token) are not replayable: they
  are left out and listed in the returned ``Converted`` (the CLI prints them).

By default a dependent request's ``not_before_ms`` is its parent's plus the gap, so a faster
router lets the session go faster; ``keep_schedule`` keeps the recorded arrival as the lower
bound instead.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from benchmarks.replay.agentic_format import write_agentic
from benchmarks.replay.trace import TraceError, TraceRequest
from processor.traces import TraceRecord
from router.hints import AgentHints

_decoder = msgspec.json.Decoder(TraceRecord)
_AT = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class Converted:
    """What a conversion produced and what it left out (never silently)."""

    requests: int = 0
    sessions: int = 0
    dependent: int = 0  # requests that wait for an earlier one of their prefix
    dropped: list[str] = field(default_factory=list)  # "<file>:<line>: <why>"


def _records(paths: Sequence[Path]) -> Iterator[tuple[Path, int, TraceRecord]]:
    for path in paths:
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                if not raw.endswith(b"\n"):
                    raise TraceError(path, n, "<line>", "truncated line (no newline at the end)")
                try:
                    yield path, n, _decoder.decode(raw)
                except msgspec.ValidationError as e:
                    m = _AT.search(str(e))
                    raise TraceError(path, n, m.group(1) if m else "<line>", str(e)) from None
                except msgspec.DecodeError as e:
                    raise TraceError(path, n, "<line>", f"not JSON ({e})") from None


def _hints(rec: TraceRecord) -> AgentHints | None:
    h = AgentHints(
        prefix_id=rec.prefix_id,
        total_requests=rec.total_requests,
        osl=rec.osl,
        iat_ms=None if rec.iat_ms is None else round(rec.iat_ms),
        latency_sensitivity=rec.latency_sensitivity,
        priority=rec.priority,
        pin_type=None if rec.pin_ttl_s is None else "ephemeral",
        pin_ttl_s=rec.pin_ttl_s,
    )
    return None if h.is_empty() else h


def processor_requests(
    paths: Iterable[Path | str], keep_schedule: bool = False
) -> tuple[list[TraceRequest], Converted]:
    """The requests of processor trace files (rotated files may be given in any order)."""
    files = [Path(p) for p in paths]
    kept: list[tuple[float, Path, int, TraceRecord]] = []
    out = Converted()
    block = 0
    for path, n, rec in _records(files):
        if rec.error is not None or rec.prompt_tokens < 1 or rec.output_tokens < 1:
            why = rec.error or ("no prompt" if rec.prompt_tokens < 1 else "no output token")
            out.dropped.append(f"{path}:{n}: {why}")
            continue
        if rec.block_size < 1 or (block and rec.block_size != block):
            raise TraceError(path, n, "block_size", f"{rec.block_size}, earlier records: {block}")
        block = rec.block_size
        if len(rec.block_hashes) != rec.prompt_tokens // block:
            raise TraceError(
                path,
                n,
                "block_hashes",
                f"{len(rec.block_hashes)} hashes for {rec.prompt_tokens} tokens",
            )
        if rec.e2e_ms is None:
            raise TraceError(
                path, n, "e2e_ms", "missing on a finished request (needed for tool gaps)"
            )
        kept.append((rec.ts, path, n, rec))
    kept.sort(key=lambda k: k[0])
    if not kept:
        return [], out
    t0 = kept[0][0]
    ids: dict[int, int] = {}
    finishes: dict[str, list[tuple[float, int]]] = {}  # per session: (finish ms, index), sorted
    requests: list[TraceRequest] = []
    for i, (ts, _path, _n, rec) in enumerate(kept):
        arrival = (ts - t0) * 1000.0
        session = rec.prefix_id if rec.prefix_id is not None else f"solo{i}"
        hashes = [ids.setdefault(h, len(ids)) for h in rec.block_hashes]
        if rec.prompt_tokens % block:  # the partial last block: an id nobody else uses
            fresh = ids[-1 - i] = len(ids)  # reserved under a key no real hash has (< 0)
            hashes.append(fresh)
        done = finishes.setdefault(session, [])
        k = bisect.bisect_right(done, (arrival, float("inf"))) - 1
        parent, delay = (None, 0.0) if k < 0 else (done[k][1], arrival - done[k][0])
        if parent is not None and not keep_schedule:
            arrival = requests[parent].arrival_ms + delay
        requests.append(
            TraceRequest(
                index=i,
                arrival_ms=round(arrival, 3),
                input_length=rec.prompt_tokens,
                output_length=rec.output_tokens,
                hash_ids=tuple(hashes),
                hash_block=block,
                hints=_hints(rec),
                session_id=session,
                parent=parent,
                delay_ms=round(delay, 3),
            )
        )
        bisect.insort(done, ((ts - t0) * 1000.0 + rec.e2e_ms, i))
    out.requests = len(requests)
    out.sessions = len({r.session_id for r in requests})
    out.dependent = sum(r.parent is not None for r in requests)
    return requests, out


def convert_processor_trace(
    src: Path | str | Sequence[Path | str], dst: Path | str, keep_schedule: bool = False
) -> Converted:
    """Convert processor trace file(s) ``src`` into the agentic_mooncake v2 file ``dst``."""
    paths = [src] if isinstance(src, (str, Path)) else list(src)
    requests, out = processor_requests(paths, keep_schedule)
    write_agentic(dst, requests, source="akr.processor-trace")
    return out
