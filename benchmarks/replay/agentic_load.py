"""What a trace asks of a cluster: live context (KV pressure) and modelled engine load.

Why a model: a preset must hit a pressure and a load before anything is replayed. The
constants were measured on Dynamo 1.6.1's mocker through its own replay
(``run_trace_replay``, one worker, default vLLM engine, speed 1):

- prefill runs at ~48.4k tokens/s (TTFT of one 8k-32k-token prompt), chunked at 8192;
- a decode step takes ~5.8 ms + ~50 ms x the fraction of the worker's KV held by the running
  requests (one request of 2k tokens, or four, at 256 to 65,536 blocks: the step time
  depends on that fraction, not on the block count). So one output token of a request with
  context c costs about 50 ms x c / KV of engine time, whatever the KV size;
- everything divides by the mocker's ``speedup_ratio``.

Load is the engine time the requests need per unit of time, per worker: prefill of the
tokens not reused plus that marginal decode cost, divided by ``KNEE``, the modelled value at
which Dynamo's kv-router replay starts to queue. Measured on pressure-1.5 traces at 8 workers
with 256, 512 and 1024 blocks per worker: at a modelled 1.0 its TTFT p90 stayed at 220-330 ms
with no admission wait to speak of; at 1.2-1.3 admission waits appeared (TTFT p90 0.75-2.4 s);
at 1.5-1.6 the queue grew without bound (TTFT p50 3-11 s). So ``load`` 1.0 is that knee, and
0.5 is half of what the cluster serves. How much is reused depends on the router and the
pressure; ``ASSUMED_REUSE`` is what Dynamo's kv router reached on those traces (0.24-0.34).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from benchmarks.replay.trace import TraceRequest

ENGINE_BLOCK = 64  # the cluster's KV block (tokens)
PREFILL_MS_PER_TOKEN = 1000.0 / 48_400.0  # speed 1
DECODE_FULL_KV_MS = 50.0  # decode step time added by running requests holding the whole KV
ASSUMED_REUSE = 0.3  # prefix reuse of Dynamo's kv router at pressure 1.5 (measured)
KNEE = 1.3  # modelled engine time per unit time at which Dynamo's replay starts to queue


def request_cost_ms(
    isl: float,
    osl: float,
    kv_tokens: float,
    reuse: float,
    speed: float = 1.0,
    decode_speedup: float = 1.0,
) -> float:
    """Engine time (ms) one request needs on a worker of ``kv_tokens`` KV at mocker
    ``speedup_ratio`` ``speed`` and ``decode_speedup_ratio`` ``decode_speedup``."""
    prefill = isl * (1.0 - reuse) * PREFILL_MS_PER_TOKEN
    decode = osl * DECODE_FULL_KV_MS * (isl + osl / 2) / kv_tokens / decode_speedup
    return (prefill + decode) / speed


def modelled_load(
    requests: Sequence[TraceRequest],
    workers: int,
    num_gpu_blocks: int,
    speed: float = 1.0,
    reuse: float = ASSUMED_REUSE,
    span_ms: float | None = None,
    decode_speedup: float = 1.0,
) -> float:
    """Per-worker load of the trace over ``span_ms`` (default: first to last arrival) if
    ``reuse`` of every prompt is served from cache; 1.0 is the knee (module docstring)."""
    if not requests:
        return 0.0
    kv = num_gpu_blocks * ENGINE_BLOCK
    cost = sum(
        request_cost_ms(r.input_length, r.output_length, kv, reuse, speed, decode_speedup)
        for r in requests
    )
    if span_ms is None:
        span_ms = max(r.arrival_ms for r in requests) - min(r.arrival_ms for r in requests)
    return cost / workers / max(span_ms, 1.0) / KNEE


def live_context_tokens(requests: Sequence[TraceRequest], step_ms: float = 1000.0) -> np.ndarray:
    """Distinct prompt tokens of the live sessions every ``step_ms`` over the planned schedule.

    A request's context is live from its arrival until its child's arrival (the session is in
    a tool call, its cache worth keeping); a request without a child holds it for no time.
    Service time is not counted, so this is a lower bound on what a replay keeps live. Tokens
    shared by live requests (system prompts) count once."""
    child_at: dict[int, float] = {}
    for r in requests:
        if r.parent is not None:
            child_at[r.parent] = r.arrival_ms
    end = max((r.arrival_ms for r in requests), default=0.0)
    steps = int(end // step_ms) + 1
    by_step: list[list[TraceRequest]] = [[] for _ in range(steps)]
    for r in requests:
        until = child_at.get(r.index, r.arrival_ms)
        for k in range(math.ceil(r.arrival_ms / step_ms), min(steps, math.ceil(until / step_ms))):
            by_step[k].append(r)
    out = np.zeros(steps)
    for k, live in enumerate(by_step):
        if not live:
            continue
        ids = np.concatenate([np.asarray(r.hash_ids, dtype=np.uint64) for r in live])
        tokens = np.concatenate([_block_tokens(r) for r in live])
        order = np.argsort(ids, kind="stable")
        ids, tokens = ids[order], tokens[order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        out[k] = float(np.maximum.reduceat(tokens, starts).sum())
    return out


def _block_tokens(r: TraceRequest) -> np.ndarray:
    t = np.full(len(r.hash_ids), r.hash_block, dtype=np.int64)
    if len(t):
        t[-1] = r.input_length - (len(t) - 1) * r.hash_block
    return t
