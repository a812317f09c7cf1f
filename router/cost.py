"""The routing score: the milliseconds a request is predicted to cost on each worker.

    score = prefill_ms + decode_ms + eviction_ms + kv_full_ms + learned_ms - affinity_ms

Each term is an array over the candidate workers, in ms, made by one function below; the
lowest score wins. Terms are only ever added, so more load never makes a worker look better,
and every term of the best candidates is written to the trace.

prefill_ms   the predicted time to first token: the request's uncached tokens on the worker
             plus the prefill already queued there, computed back to back by the engine
             (engine_prefill_ms). The engine works in passes of at most
             prefill_chunk_tokens (vLLM's max_num_batched_tokens), and a pass of t tokens
             costs prefill_ms_per_token x (t + t^2 / CURVE_TOKENS + PASS_TOKENS): a fixed cost
             per pass and a cost per token that grows with the pass (attention). The shape is
             the mocker's prefill polynomial, with its slope as the one calibrated setting;
             so 8k queued tokens predict 167 ms, not 123 ms as the slope alone would.
decode_ms    the decode blocks running on the worker, each worth decode_block_weight of a
             prefill block (block_ms: the slope x the block size): the batch the request
             would join, in that worker's time (x its learned speed factor, when the
             learner is on).
eviction_ms  the recompute time of other conversations' claimed blocks that the request's
             new blocks would push out of a full worker. A conversation claims its home's
             blocks while pinned (cache_control) or while its next request is expected
             (iat hint; router/prefix_table.py), and releases them after its last one.
kv_full_ms   the predicted wait for KV blocks when our requests in flight there plus this
             one's new blocks do not fit the worker's KV capacity: until enough of them end
             to free the overflow, each after the hold time measured from the requests'
             decode (output tokens x ITL).
affinity_ms  subtracted, on the conversation's home only while it has requests to come or a
             pin: the recompute time of the blocks only the home holds, capped at
             affinity_cap_ms and scaled by the requests still to come.
learned_ms   the learner's per-worker correction of what this model gets wrong
             (router/bandit.py), learned from measured TTFT minus prefill_ms.

prefill_ms + kv_full_ms is the predicted TTFT that the policy's tail guard and admission
compare (router/policy.py). The prefill curve rises with tokens, so alone it orders workers
as Dynamo's token count does; it moves decisions where it meets the other terms (a long
queue against affinity, decode load or the learner) and in those TTFT comparisons.

With prefill_chunk_tokens = 0 (prefill linear in tokens), decode_block_weight = 1, affinity
and the learner off, no pins and no full worker, the score is one block's prefill time x
Dynamo's default cost (potential prefill blocks + decode blocks), so we pick the worker
Dynamo's KV router picks (tests/integration/test_dynamo_equivalence.py checks it against
KvRouter.best_worker).
"""

from __future__ import annotations

import msgspec
import numpy as np

from router.config import RouterConfig
from router.signals import WorkerSignals

TERMS = ("prefill_ms", "decode_ms", "eviction_ms", "kv_full_ms", "learned_ms", "affinity_ms")
# The shape of a chunked engine's prefill pass, in tokens of its per-token slope: the mocker's
# default polynomial 4.209989e-7 t^2 + 1.518344e-2 t + 16.50142 ms for a pass of t new tokens.
PASS_TOKENS = 16.50142 / 1.518344e-2  # a pass's fixed cost: ~1087 tokens' worth
CURVE_TOKENS = 1.518344e-2 / 4.209989e-7  # t^2 / CURVE_TOKENS: ~36k, +23% at an 8192 chunk
# Requests still to come at which the affinity value saturates.
AFFINITY_HORIZON = 4.0

Terms = dict[str, np.ndarray]


class Candidate(msgspec.Struct):
    """One scored worker, as the decision returns it and the trace writes it."""

    worker_id: int
    score: float
    terms: dict[str, float]  # TERMS -> ms
    overlap_blocks: float
    uncached_tokens: float
    queued_tokens: float


def block_ms(cfg: RouterConfig, block_size: int) -> float:
    """Prefill time of one full block (ms): the unit that turns blocks into milliseconds."""
    return cfg.prefill_ms_per_token * block_size


def split_prefill(
    prompt_tokens: int,
    overlap_blocks: np.ndarray,
    potential_prefill_tokens: np.ndarray,
    block_size: int,
    kv_overlap_blocks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Dynamo's potential prefill split into (this request's uncached, already queued) tokens.

    Dynamo computed ``potential_prefill_tokens`` with the KV-event overlap
    (``kv_overlap_blocks``, default ``overlap_blocks``): the queued part is what remains
    without this request's uncached tokens under that overlap. The uncached part is then
    taken at ``overlap_blocks``, which may include the history fallback.
    """
    uncached = np.maximum(prompt_tokens - overlap_blocks * block_size, 0.0)
    if kv_overlap_blocks is None:
        uncached_kv = uncached
    else:
        uncached_kv = np.maximum(prompt_tokens - kv_overlap_blocks * block_size, 0.0)
    queued = np.maximum(potential_prefill_tokens - uncached_kv, 0.0)
    return uncached, queued


def kv_overflow(
    used_blocks: np.ndarray,
    shared_blocks: np.ndarray,
    request_blocks: int,
    capacity_blocks: np.ndarray,
) -> np.ndarray:
    """Blocks by which our requests in flight + this request's blocks not already among them
    exceed each worker's KV (<= 0: it fits). kept_overlap and kv_full_ms read the same figure."""
    return used_blocks + (request_blocks - shared_blocks) - capacity_blocks


def kept_overlap(
    overlap_blocks: np.ndarray,
    used_blocks: np.ndarray | None,
    shared_blocks: np.ndarray | None,
    request_blocks: int,
    capacity_blocks: np.ndarray,
) -> np.ndarray:
    """The blocks of this prompt still cached when it runs. Where it does not fit beside our
    requests in flight (kv_full_ms), it waits while the engine admits and grows others in
    the room those requests leave; of its cached blocks that no request in flight holds, at
    most that room (capacity - used) survives, the rest is evicted before it runs. Elsewhere
    the overlap as reported (None: not tracked)."""
    if used_blocks is None or shared_blocks is None:
        return overlap_blocks
    overflow = kv_overflow(used_blocks, shared_blocks, request_blocks, capacity_blocks)
    if not np.count_nonzero(overflow > 0):
        return overlap_blocks
    room = np.maximum(capacity_blocks - used_blocks, 0.0)
    return np.where(overflow > 0, np.minimum(overlap_blocks, shared_blocks + room), overlap_blocks)


def prefill_ms(cfg: RouterConfig, uncached: np.ndarray, queued: np.ndarray) -> np.ndarray:
    """Time to first token: this request's prefill behind the prefill queued on the worker."""
    return engine_prefill_ms(cfg, uncached + queued)


def engine_prefill_ms(cfg: RouterConfig, tokens: np.ndarray | float) -> np.ndarray:
    """Prefill time of ``tokens`` prompt tokens computed back to back (ms).

    Linear (``prefill_ms_per_token`` per token) with ``prefill_chunk_tokens`` 0. Otherwise a
    chunked engine's: the tokens go through passes of at most ``prefill_chunk_tokens`` (at
    least one pass), and a pass of t tokens costs ``prefill_ms_per_token`` x (t + t^2 /
    CURVE_TOKENS + PASS_TOKENS): the mocker's polynomial with its slope as the unit.
    """
    per_token = cfg.prefill_ms_per_token
    chunk = cfg.prefill_chunk_tokens
    if not chunk:
        return per_token * tokens
    full = np.floor_divide(tokens, chunk)
    rest = tokens - full * chunk
    passes = np.maximum(full + (rest > 0), 1.0)
    squares = full * float(chunk * chunk) + rest * rest
    return per_token * (tokens + squares / CURVE_TOKENS + PASS_TOKENS * passes)


def decode_ms(
    cfg: RouterConfig,
    block_size: int,
    decode_blocks: np.ndarray,
    speed: np.ndarray | None = None,
) -> np.ndarray:
    """The decode batch the request joins. A decode block weighs less than a prefill block:
    other sequences' decode steps barely delay a new prefill. ``speed`` (the learner's factor
    per worker) puts it in each worker's own time: a fast worker's decode load costs less."""
    ms = (cfg.decode_block_weight * block_ms(cfg, block_size)) * decode_blocks
    return ms if speed is None else ms * speed


def eviction_ms(
    cfg: RouterConfig,
    block_size: int,
    uncached: np.ndarray,
    decode_blocks: np.ndarray,
    claimed_blocks: np.ndarray,
    capacity_blocks: np.ndarray,
) -> np.ndarray:
    """Recompute time of other conversations' claimed blocks the request would push out.

    Free = capacity - decode blocks - claimed blocks; new blocks beyond it come out of the
    claimed ones (blocks of finished or overdue conversations are fair game), so cold work
    goes where it evicts the least expected reuse.
    """
    if not np.count_nonzero(claimed_blocks):  # no claims anywhere (the common case): 0
        return np.zeros(uncached.shape)
    new_blocks = np.ceil(uncached / block_size)
    free = np.maximum(capacity_blocks - decode_blocks - claimed_blocks, 0.0)
    return block_ms(cfg, block_size) * np.clip(new_blocks - free, 0.0, claimed_blocks)


def kv_full_ms(
    used_blocks: np.ndarray | None,
    shared_blocks: np.ndarray | None,
    request_blocks: int,
    capacity_blocks: np.ndarray,
    active_requests: np.ndarray,
    hold_ms: float,
) -> np.ndarray:
    """The predicted wait for free KV blocks where the distinct blocks of our requests in
    flight + this request's blocks not already among them exceed the capacity (None: not
    tracked, no cost).

    Blocks free as the n requests in flight there end, each after about ``hold_ms`` of decode
    (measured, router/load.py) and each freeing about used / n blocks. With their remaining
    times spread evenly over one hold, the k-th end comes after k / (n + 1) holds, and the
    overflow needs k = ceil(n x overflow / used) of them. So a worker that a few long prompts
    fill costs a good part of a hold even for one block too many, and one with many small
    requests about hold x overflow / used. The same overflow costs seconds where answers are
    long and milliseconds where they are short. decode_ms cannot say this: it counts a shared
    prompt once per request, with no cliff."""
    if used_blocks is None or shared_blocks is None:
        return np.zeros(capacity_blocks.shape)
    overflow = np.maximum(
        kv_overflow(used_blocks, shared_blocks, request_blocks, capacity_blocks), 0.0
    )
    n = np.maximum(active_requests, 1.0)
    ends = np.minimum(np.ceil(n * overflow / np.maximum(used_blocks, 1.0)), n)
    # A request larger than the whole KV waits at least the turnover of its overflow.
    turnovers = np.maximum(ends / (n + 1.0), overflow / np.maximum(capacity_blocks, 1.0))
    # At least 1 ms: a request that does not fit always shows a wait (admission reads it so).
    return np.where(overflow > 0, np.maximum(hold_ms * turnovers, 1.0), 0.0)


def reuse_factor(remaining_requests: int, pinned: bool) -> float:
    """How much of the affinity value applies: 1 while pinned, else the share of
    ``AFFINITY_HORIZON`` requests still to come."""
    return 1.0 if pinned else min(1.0, remaining_requests / AFFINITY_HORIZON)


def affinity_ms(
    cfg: RouterConfig, block_size: int, overlap_blocks: np.ndarray, home: int, reuse: float
) -> np.ndarray:
    """The value of keeping the conversation on its home (index ``home``, -1 = none).

    Only the blocks the home holds exclusively count (its overlap minus the best other
    worker's): if another worker holds the same cache, moving loses nothing. Capped, so an
    overloaded home loses the conversation once it is more than ``affinity_cap_ms`` worse.
    """
    out = np.zeros(overlap_blocks.shape)
    if home < 0 or reuse <= 0.0 or cfg.affinity_weight <= 0.0:
        return out
    others = overlap_blocks.astype(np.float64)  # a copy
    others[home] = -np.inf
    exclusive = overlap_blocks[home] - (others.max() if others.size > 1 else 0.0)
    if exclusive > 0:
        value = min(cfg.affinity_cap_ms, block_ms(cfg, block_size) * exclusive)
        out[home] = cfg.affinity_weight * value * reuse
    return out


def breakdown(
    cfg: RouterConfig,
    block_size: int,
    signals: WorkerSignals,
    *,
    uncached: np.ndarray,
    queued: np.ndarray,
    overlap_blocks: np.ndarray,
    claimed_blocks: np.ndarray,
    request_blocks: int,
    home: int = -1,
    reuse: float = 0.0,
    speed: np.ndarray | None = None,
) -> Terms:
    """Every term for every worker; ``learned_ms`` is zero until the learner fills it in.
    ``speed`` is the learner's speed factor per worker (None: every worker as the model)."""
    decode = signals.decode_blocks
    capacity = signals.capacity_blocks
    return {
        "prefill_ms": prefill_ms(cfg, uncached, queued),
        "decode_ms": decode_ms(cfg, block_size, decode, speed),
        "eviction_ms": eviction_ms(cfg, block_size, uncached, decode, claimed_blocks, capacity),
        "kv_full_ms": kv_full_ms(
            signals.used_blocks,
            signals.shared_blocks,
            request_blocks,
            capacity,
            signals.active_requests,
            signals.hold_ms,
        ),
        "learned_ms": np.zeros(uncached.shape),
        "affinity_ms": affinity_ms(cfg, block_size, overlap_blocks, home, reuse),
    }


def score(terms: Terms) -> np.ndarray:
    """The score of every worker (ms, lower is better)."""
    return (
        terms["prefill_ms"]
        + terms["decode_ms"]
        + terms["eviction_ms"]
        + terms["kv_full_ms"]
        + terms["learned_ms"]
        - terms["affinity_ms"]
    )
