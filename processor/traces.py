"""Request/response trace records of the processor and their conversion to a replay trace.

One JSON line per request, written off the event loop by ``router.jsonl_writer.JsonlWriter``.
The schema is ``TraceRecord`` below (``python -m processor.traces schema`` prints it as JSON
Schema); prompt and output token ids are absent unless ``AKR_PROCESSOR_TRACE_TOKENS`` > 0, then
truncated to that many. ``block_hashes`` are Dynamo's block hashes of the prompt at the worker
block size: enough to replay the cache behaviour of a workload without its text.

``python -m processor.traces to-mooncake IN.jsonl OUT.jsonl`` writes a Mooncake-format trace
(``timestamp`` ms from the first request, ``input_length``, ``output_length``, ``hash_ids``)
with the block hashes renumbered densely; note the block size in the trace is the worker's
(64 by default), not Mooncake's 512.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import msgspec

from router.cost import Candidate

# 2: a candidate is router.cost.Candidate (score, the six named terms, overlap, uncached and
# queued tokens), the same type the decision returns.
SCHEMA_VERSION = 2


class TraceRecord(msgspec.Struct, omit_defaults=True):
    """One finished (or failed) request as the processor saw it."""

    v: int
    ts: float  # unix seconds when the request arrived
    request_id: str
    prompt_tokens: int
    block_size: int
    block_hashes: list[int]
    # hints (None: not sent)
    prefix_id: str | None = None
    total_requests: int | None = None
    iat_ms: int | None = None
    osl: int | None = None
    latency_sensitivity: float | None = None
    priority: int | None = None
    pin_ttl_s: float | None = None
    # decision: the best candidates, best first, each with the terms of its score (ms)
    worker_id: int | None = None
    reason: str | None = None
    home_worker_id: int | None = None  # the conversation's home before this decision
    inferred_conversation: str | None = None  # no prefix id: the one its lineage continues
    candidates: list[Candidate] = []
    decision_us: float | None = None
    retries: int = 0
    migrations: int = 0  # continuations on another worker after tokens were sent
    # outcome
    ttft_ms: float | None = None
    itl_ms: float | None = None
    e2e_ms: float | None = None
    output_tokens: int = 0
    cached_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    prompt_token_ids: list[int] | None = None
    output_token_ids: list[int] | None = None


_decoder = msgspec.json.Decoder(TraceRecord)


def read_records(path: Path) -> Iterator[TraceRecord]:
    """Parse and validate every line of a trace file; a line that breaks the schema raises
    ``ValueError`` naming the file, the line and the field."""
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield _decoder.decode(line)
                except msgspec.DecodeError as e:  # msgspec names the field: "... at `$.x`"
                    raise ValueError(f"{path}:{number}: {e}") from e


def poll_records(
    path: Path,
    enough: Callable[[list[TraceRecord]], bool],
    timeout_s: float,
    interval_s: float = 0.05,
) -> list[TraceRecord]:
    """Re-read a trace that is still being written until ``enough(records)`` or the timeout.

    For tests and benchmarks (it sleeps; never call it on an event loop). The writer appends
    in batches, so the file may be missing or end in a partial line meanwhile: both read as
    "not yet". Returns the last complete read, which may fall short after the timeout.
    """
    deadline = time.monotonic() + timeout_s
    records: list[TraceRecord] = []
    while True:
        try:
            records = list(read_records(path))
        except (FileNotFoundError, ValueError):  # msgspec.DecodeError is a ValueError
            pass
        if enough(records) or time.monotonic() > deadline:
            return records
        time.sleep(interval_s)


def to_mooncake(records: Iterable[TraceRecord]) -> list[dict]:
    """Mooncake replay rows: relative ms timestamps, lengths, densely renumbered block ids."""
    ids: dict[int, int] = {}
    rows: list[dict] = []
    first: float | None = None
    for rec in sorted(records, key=lambda r: r.ts):
        first = rec.ts if first is None else first
        rows.append(
            {
                "timestamp": round((rec.ts - first) * 1000),
                "input_length": rec.prompt_tokens,
                "output_length": rec.output_tokens,
                "hash_ids": [ids.setdefault(h, len(ids)) for h in rec.block_hashes],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("schema", help="print the JSON Schema of a trace record")
    conv = sub.add_parser("to-mooncake", help="convert a processor trace to a Mooncake trace")
    conv.add_argument("src", type=Path)
    conv.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "schema":
        json.dump(msgspec.json.schema(TraceRecord), sys.stdout, indent=2)
        print()
        return
    try:
        rows = to_mooncake(read_records(args.src))
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    with args.dst.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    print(f"{len(rows)} requests -> {args.dst}")


if __name__ == "__main__":
    main()
