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
from typing import Annotated

import msgspec
from msgspec import Meta

from router.cost import Candidate

# 2: a candidate is router.cost.Candidate (score, the six named terms, overlap, uncached and
# queued tokens), the same type the decision returns. 3: x_request_id.
SCHEMA_VERSION = 3


_HINT = "as the router used it: the client's hint"


class TraceRecord(msgspec.Struct, omit_defaults=True):
    """One finished (or failed) request as the processor saw it; each field's description is
    in the printed schema. A field whose value is absent (null) is left out of the line."""

    v: Annotated[int, Meta(description="schema version of this record")]
    ts: Annotated[float, Meta(description="unix time (s) the request reached the processor")]
    request_id: Annotated[
        str, Meta(description="Dynamo's request id: the answer's id without its 'chatcmpl-'")
    ]
    prompt_tokens: Annotated[int, Meta(description="prompt length (tokens)")]
    block_size: Annotated[
        int, Meta(description="the workers' KV block size (tokens): the unit of block_hashes")
    ]
    block_hashes: Annotated[
        list[int],
        Meta(
            description=(
                "Dynamo's hash of each full prompt block, each block on its own (not "
                "chained); empty for a prompt refused as longer than every worker's KV"
            )
        ),
    ]
    x_request_id: Annotated[
        str | None,
        Meta(
            description=(
                "the id the gateway answered with in x-request-id (the client's, else its own), "
                "also in the gateway's trace record as request_id; absent: not sent through the "
                "gateway"
            )
        ),
    ] = None
    prefix_id: Annotated[
        str | None, Meta(description="the conversation id the client sent; absent: none")
    ] = None
    total_requests: Annotated[int | None, Meta(description=f"{_HINT}, else the default 1")] = None
    iat_ms: Annotated[
        int | None,
        Meta(description="the client's iat hint (ms; LOW/MEDIUM/HIGH: 50/250/750); absent: none"),
    ] = None
    osl: Annotated[
        int | None,
        Meta(
            description=(
                f"{_HINT}, else the request's max_tokens (absent: neither); at most what the "
                "longest sequence a worker holds leaves after the prompt"
            )
        ),
    ] = None
    latency_sensitivity: Annotated[
        float | None, Meta(description=f"{_HINT}, else the default 0")
    ] = None
    priority: Annotated[int | None, Meta(description=f"{_HINT}, else the default 0")] = None
    pin_ttl_s: Annotated[
        float | None,
        Meta(description="cache_control pin TTL (s): the client's, 300 for a pin without one"),
    ] = None
    worker_id: Annotated[
        int | None,
        Meta(
            description=(
                "worker of the last attempt (Dynamo instance id, decimal; the metrics' worker "
                "label is the same id in hex); absent: no decision"
            )
        ),
    ] = None
    reason: Annotated[
        str | None, Meta(description="why that worker: sticky, pin, overlap, load, exploration")
    ] = None
    home_worker_id: Annotated[
        int | None, Meta(description="the conversation's home worker before this decision")
    ] = None
    inferred_conversation: Annotated[
        str | None,
        Meta(description="without a prefix_id: the conversation its prompt extends (lineage)"),
    ] = None
    candidates: Annotated[
        list[Candidate],
        Meta(description="the best scored workers, best first, with their score's terms in ms"),
    ] = []
    decision_us: Annotated[
        float | None,
        Meta(description="time of the last routing decision (µs); absent: no decision"),
    ] = None
    retries: Annotated[
        int, Meta(description="attempts on another worker after a failure before any token")
    ] = 0
    migrations: Annotated[
        int, Meta(description="continuations on another worker after tokens were sent")
    ] = 0
    ttft_ms: Annotated[
        float | None,
        Meta(
            description=(
                "time to first token from arrival (ms), admission wait and retries included; "
                "absent: no token"
            )
        ),
    ] = None
    itl_ms: Annotated[
        float | None, Meta(description="mean inter-token latency (ms); absent: under 2 tokens")
    ] = None
    e2e_ms: Annotated[
        float | None, Meta(description="from arrival to the end of the answer or failure (ms)")
    ] = None
    output_tokens: Annotated[int, Meta(description="tokens streamed back")] = 0
    cached_tokens: Annotated[
        int | None,
        Meta(
            description=(
                "prompt tokens the worker served from its KV cache (at most prompt_tokens); "
                "absent: not reported"
            )
        ),
    ] = None
    finish_reason: Annotated[
        str | None,
        Meta(
            description=(
                "the worker's finish reason (stop, length, ...); for a request that did not "
                "end ok without one, its outcome: cancelled, rejected, unavailable or error"
            )
        ),
    ] = None
    error: Annotated[
        str | None,
        Meta(
            description=(
                "why the request failed ('client disconnected' when cancelled); absent: it ended ok"
            )
        ),
    ] = None
    prompt_token_ids: Annotated[
        list[int] | None,
        Meta(description="the first AKR_PROCESSOR_TRACE_TOKENS prompt ids; absent by default"),
    ] = None
    output_token_ids: Annotated[
        list[int] | None,
        Meta(description="the first AKR_PROCESSOR_TRACE_TOKENS output ids; absent by default"),
    ] = None


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
        prog="python -m processor.traces",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
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
