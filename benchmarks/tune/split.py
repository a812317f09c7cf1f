"""The trace a tuning run reads, and its split into a tuning part and a held-back part.

Why split: settings tuned and judged on the same requests look better than they are. The
tuner searches on the first part and every figure in the report's comparison comes from the
rest, which no trial saw. A conversation (session, or a chain of dependent requests) stays
whole on one side, so no request waits for a parent the replay does not have.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from benchmarks.replay import agentic
from benchmarks.replay.agentic_format import SCHEMA
from benchmarks.replay.trace import TraceError, TraceRequest, read_mooncake


class TuneInputError(ValueError):
    """Bad input to the tuner: the message names the argument or file and what is wrong."""


def trace_format(path: Path) -> str:
    """``agentic`` when the first line is Dynamo's agentic_mooncake header, else ``mooncake``."""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            if raw.strip():
                try:
                    first = json.loads(raw)
                except json.JSONDecodeError:
                    return "mooncake"  # the reader names the line and the field
                is_header = isinstance(first, dict) and first.get("schema") == SCHEMA
                return "agentic" if is_header else "mooncake"
    return "mooncake"


def load_trace(path: Path, limit: int | None = None) -> list[TraceRequest]:
    """Every request of a mooncake or agentic trace file (the first ``limit`` rows if set;
    dependent requests whose parent is cut are left out with it)."""
    if not path.is_file():
        raise TuneInputError(f"--trace {path}: no such file")
    try:
        if trace_format(path) == "agentic":
            requests = agentic.read_agentic(path)
            if limit is not None:
                keep: set[int] = set()
                for r in requests[:limit]:
                    if r.parent is None or r.parent in keep:
                        keep.add(r.index)
                requests = [r for r in requests if r.index in keep]
        else:
            requests = read_mooncake(path, limit)
    except TraceError as e:
        raise TuneInputError(f"--trace {e}") from None
    if not requests:
        raise TuneInputError(f"--trace {path}: the trace has no requests")
    return requests


def _conversation_of(requests: list[TraceRequest]) -> dict[int, int | str]:
    """Request index -> the conversation it belongs to (its root request, or its session)."""
    root: dict[int, int | str] = {}
    for r in requests:  # parents come first (the readers check it)
        if r.session_id is not None:
            root[r.index] = r.session_id
        elif r.parent is not None:
            root[r.index] = root.get(r.parent, r.parent)
        else:
            root[r.index] = r.index
    return root


def _rebased(requests: list[TraceRequest]) -> list[TraceRequest]:
    t0 = min(r.arrival_ms for r in requests)
    return [dataclasses.replace(r, arrival_ms=r.arrival_ms - t0) for r in requests]


def split_trace(
    requests: list[TraceRequest], holdout: float
) -> tuple[list[TraceRequest], list[TraceRequest]]:
    """(tuning part, held-back part): conversations in order of their first arrival, the last
    ``holdout`` share of them held back; each part starts at time 0."""
    if not 0.0 < holdout < 1.0:
        raise TuneInputError(f"--holdout {holdout}: must be between 0 and 1")
    conv = _conversation_of(requests)
    first: dict[int | str, float] = {}
    for r in requests:
        c = conv[r.index]
        first[c] = min(first.get(c, r.arrival_ms), r.arrival_ms)
    order = sorted(first, key=lambda c: (first[c], str(c)))
    n_tune = round(len(order) * (1.0 - holdout))
    if n_tune < 1 or n_tune >= len(order):
        raise TuneInputError(
            f"--trace: {len(order)} conversation(s) cannot be split into a tuning and a "
            f"held-back part at --holdout {holdout}"
        )
    tune_set = set(order[:n_tune])
    tune = [r for r in requests if conv[r.index] in tune_set]
    held = [r for r in requests if conv[r.index] not in tune_set]
    return _rebased(tune), _rebased(held)
