"""What one replayed request became: the row every arm writes and every figure is read from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RequestRecord:
    """One request's outcome on the virtual clock (milliseconds since the trace's start)."""

    index: int  # position in the trace
    request_id: str
    worker: int  # worker index, 0..N-1
    arrival_ms: float  # when it reached the router (after any dependency's tool gap)
    first_token_ms: float
    finish_ms: float
    input_length: int
    output_length: int
    reused_tokens: int  # prompt tokens served from the worker's prefix cache
    ttft_ms: float  # first_token_ms - arrival_ms
    e2e_ms: float  # finish_ms - arrival_ms
    itl_ms: float | None = None  # mean inter-token latency; None for one-token answers
    session_id: str | None = None
    refused: bool = False  # refused by admission (or its conversation was): never served
