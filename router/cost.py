"""The routing score: predicted milliseconds a request costs on each worker (lower wins).

Where it comes from
-------------------
Dynamo's KV router scores each worker by ``prefill blocks after overlap credit + decode
blocks``: ``potential_prefill_tokens / block_size + potential_decode_blocks``, where
``potential_prefill_tokens`` (from ``KvRouter.get_potential_loads``) is this request's
uncached tokens on that worker plus the prefill already queued there. It forgets
conversations between turns and cannot tell a fast worker from a slow one.

NAT's prior art (brief section 4) adds agent hints through a 9-feature LinTS score, a Beta
sample, an affinity bonus and a switching cost, and then *multiplies* the whole score by a
load modifier. When the score is negative that product rewards the loaded worker, and a
reward mixing queueing, prefill and decode into one number cannot say which went wrong.

What we do instead
------------------
Every term is in milliseconds and they are only ever ADDED, so more load can only make a
worker look worse, and each term can be printed in a trace:

    ttft_ms     = prefill_ms_per_token * (uncached_tokens + queue_weight * queued_tokens)
                  -- predicted time to first token: this request's prefill after the
                     worker's cache overlap, behind the prefill already queued there.
    decode_ms   = decode_ms_per_block * decode_blocks + active_request_ms * active_requests
                  + decode_ms_per_block * class_mix_blocks
                  -- decode pressure (the request shares its batch with these blocks).
                     class_mix_blocks keeps latency classes apart (hint latency_sensitivity:
                     > 0 sensitive, 0 background, router/load.py): for a sensitive request
                     sensitive_mix_weight x the background blocks in flight on the worker,
                     for a background request background_mix_weight x its own blocks x the
                     sensitive requests in flight there (the delay it would add to each of
                     them); 0 for requests without the hint. Both weights default to 0.
                  + prefill_interference_weight * prefill_ms_per_token * uncached_tokens
                    * active_requests
                  -- the stall this request's own prefill adds to each request running
                     there (off by default; a cold prompt on a busy worker stalls them all,
                     a cache hit barely does).
                     Why: on the mixed workload a sensitive request's TTFT was ~20-25 ms
                     higher on a worker decoding a background request's long document; no
                     gain shown yet at weight 1 (benchmarks/README.md, "Latency classes").
    eviction_ms = eviction_weight * block_ms * overflow
                  -- overflow = pinned blocks of OTHER live conversations that this
                     request's new (uncached) blocks would push out of a full worker:
                     min(pinned, new blocks - free blocks), free = capacity - decode
                     blocks - pinned; block_ms is one block's recompute time.
    affinity_ms = affinity_weight * min(affinity_cap_ms, block_ms * exclusive_blocks)
                  * reuse_factor, on the conversation's home worker only
                  -- the value of keeping the conversation where its cache is: the
                     recompute time of the blocks only the home holds (home overlap minus
                     the best other worker's overlap; if another worker holds the same
                     cache, moving loses nothing and the value is 0). Moving also leaves a
                     stale duplicate behind and, without KV events, bets on a cache we
                     cannot see. reuse_factor = min(1, remaining_requests /
                     affinity_horizon), or 1 while pinned. Capped, so an overloaded home
                     loses once it is more than affinity_cap_ms worse.
    waiting_ms  = engine_waiting_ms * waiting_requests + kv_full_ms * [used + new > capacity]
                  -- the request would wait inside the engine. waiting_requests: what the
                     worker's engine reports holding back (no KV blocks or batch budget in
                     its last forward pass; processor/engine_state.py). used: distinct
                     blocks our requests in flight hold there, new: this request's blocks
                     (prompt + expected output) minus the leading ones they already hold
                     (router/load.py): if they do not fit, the engine makes it wait for
                     blocks. decode_ms cannot say this: it counts a shared system prompt
                     once per request and is linear, with no cliff. engine_waiting_ms is
                     off by default, kv_full_ms is 300 ms (router/config.py says why).
    learned_ms  = per-worker latency correction sampled by the bandit (router/bandit.py).

    total_ms    = ttft_ms + decode_ms + eviction_ms + waiting_ms + learned_ms - affinity_ms

Equivalence with Dynamo: with ``queue_weight = 1``, ``decode_ms_per_block =
prefill_ms_per_token * block_size`` (``decode_block_weight = 1``; the default is 0.25, see
its description in router/config.py), ``active_request_ms = 0``, no
pins, affinity and learning off, ``total_ms = block_ms * dynamo_cost`` for every worker,
so both pick the same worker (tests/unit/test_router_cost.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.config import RouterConfig
from router.load import BACKGROUND, SENSITIVE


@dataclass(slots=True)
class CostBreakdown:
    """Per-worker terms of the score, arrays of shape (W,). ``total`` = the score."""

    uncached_tokens: np.ndarray
    queued_tokens: np.ndarray
    ttft_ms: np.ndarray
    decode_ms: np.ndarray
    eviction_ms: np.ndarray
    affinity_ms: np.ndarray
    learned_ms: np.ndarray
    waiting_ms: np.ndarray

    @property
    def base(self) -> np.ndarray:
        """Score without the affinity value (used to tell whether affinity decided)."""
        return self.ttft_ms + self.decode_ms + self.eviction_ms + self.waiting_ms + self.learned_ms

    @property
    def total(self) -> np.ndarray:
        return self.base - self.affinity_ms


def split_prefill(
    prompt_tokens: int,
    overlap_blocks: np.ndarray,
    potential_prefill_tokens: np.ndarray,
    block_size: int,
    kv_overlap_blocks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split Dynamo's potential prefill into (this request's uncached, already queued).

    ``potential_prefill_tokens`` was computed by Dynamo with the KV-event overlap
    (``kv_overlap_blocks``, defaults to ``overlap_blocks``); the queued part is what remains
    after removing this request's uncached tokens under that overlap. The uncached part is
    then recomputed with ``overlap_blocks``, which may include the history fallback.
    """
    uncached = np.maximum(prompt_tokens - overlap_blocks * block_size, 0.0)
    if kv_overlap_blocks is None:
        uncached_kv = uncached
    else:
        uncached_kv = np.maximum(prompt_tokens - kv_overlap_blocks * block_size, 0.0)
    queued = np.maximum(potential_prefill_tokens - uncached_kv, 0.0)
    return uncached, queued


def score(
    cfg: RouterConfig,
    *,
    prompt_tokens: int,
    overlap_blocks: np.ndarray,
    potential_prefill_tokens: np.ndarray,
    decode_blocks: np.ndarray,
    active_requests: np.ndarray,
    reserved_blocks: np.ndarray,
    capacity_blocks: np.ndarray,
    home: int = -1,
    remaining_requests: int = 0,
    pinned: bool = False,
    kv_overlap_blocks: np.ndarray | None = None,
    learned_ms: np.ndarray | None = None,
    engine_waiting: np.ndarray | None = None,
    used_blocks: np.ndarray | None = None,
    shared_blocks: np.ndarray | None = None,
    request_blocks: int = 0,
    latency_class: int = 0,
    background_blocks: np.ndarray | None = None,
    sensitive_requests: np.ndarray | None = None,
) -> CostBreakdown:
    """Score all W workers for one request; every array argument has shape (W,).

    ``home`` is the index (not id) of the conversation's home worker, -1 if none;
    ``overlap_blocks`` may include the history fallback (the home's remembered blocks);
    ``reserved_blocks`` must already exclude this conversation's own reservation;
    ``engine_waiting`` is requests each engine holds back (None = no reports);
    ``used_blocks``/``shared_blocks`` (None = not tracked) and ``request_blocks`` (prompt +
    expected output, in blocks) feed the KV-full check.
    """
    bs = cfg.block_size
    block_ms = cfg.block_ms
    uncached, queued = split_prefill(
        prompt_tokens, overlap_blocks, potential_prefill_tokens, bs, kv_overlap_blocks
    )
    ttft = cfg.prefill_ms_per_token * (uncached + cfg.queue_weight * queued)
    decode = cfg.decode_ms_per_block * decode_blocks
    if cfg.active_request_ms:
        decode = decode + cfg.active_request_ms * active_requests
    if cfg.prefill_interference_weight:
        # What our prefill costs the requests it is batched with: each waits about as long.
        per_request = (cfg.prefill_interference_weight * cfg.prefill_ms_per_token) * uncached
        decode = decode + per_request * active_requests
    # Class mixing; the arrays are None unless a weight is set (router/kv_signals.py).
    if latency_class == SENSITIVE and background_blocks is not None and cfg.sensitive_mix_weight:
        decode = decode + (cfg.sensitive_mix_weight * cfg.decode_ms_per_block) * background_blocks
    elif (
        latency_class == BACKGROUND and sensitive_requests is not None and cfg.background_mix_weight
    ):
        per_request = cfg.background_mix_weight * cfg.decode_ms_per_block * request_blocks
        decode = decode + per_request * sensitive_requests

    # Eviction: free = capacity - active decode blocks - others' pinned blocks. New blocks
    # beyond free space come out of the pinned ones (unpinned cached blocks are fair game).
    # Without pins anywhere (the common case) overflow is clipped to 0: skip the arithmetic.
    if np.count_nonzero(reserved_blocks):
        new_blocks = np.ceil(uncached / bs)
        free = np.maximum(capacity_blocks - decode_blocks - reserved_blocks, 0.0)
        overflow = np.clip(new_blocks - free, 0.0, reserved_blocks)
        eviction = (cfg.eviction_weight * block_ms) * overflow
    else:
        eviction = np.zeros(ttft.shape)

    affinity = np.zeros(ttft.shape)
    if home >= 0 and cfg.affinity_weight > 0 and (remaining_requests > 0 or pinned):
        reuse = 1.0 if pinned else min(1.0, remaining_requests / cfg.affinity_horizon)
        # Best overlap among the other workers (0 if the home is the only worker).
        others = overlap_blocks.astype(np.float64)  # a copy
        others[home] = -np.inf
        exclusive = overlap_blocks[home] - (others.max() if others.size > 1 else 0.0)
        if exclusive > 0:
            value = min(cfg.affinity_cap_ms, block_ms * exclusive)
            affinity[home] = cfg.affinity_weight * value * reuse

    learned = np.zeros(ttft.shape) if learned_ms is None else learned_ms
    if engine_waiting is None or not cfg.engine_waiting_ms:
        waiting = np.zeros(ttft.shape)
    else:
        waiting = cfg.engine_waiting_ms * engine_waiting
    if cfg.kv_full_ms and used_blocks is not None and shared_blocks is not None:
        full = used_blocks + (request_blocks - shared_blocks) > capacity_blocks
        if full.any():
            waiting = waiting + cfg.kv_full_ms * full
    return CostBreakdown(
        uncached_tokens=uncached,
        queued_tokens=queued,
        ttft_ms=ttft,
        decode_ms=decode,
        eviction_ms=eviction,
        affinity_ms=affinity,
        learned_ms=learned,
        waiting_ms=waiting,
    )


def dynamo_cost(
    potential_prefill_tokens: np.ndarray, decode_blocks: np.ndarray, block_size: int
) -> np.ndarray:
    """Dynamo 1.6.1's default worker cost (prefill_load_scale = 1, temperature 0):
    potential prefill blocks (after overlap credit, incl. queued) + potential decode blocks.
    Reference for the equivalence test; not used for routing."""
    return potential_prefill_tokens / block_size + decode_blocks
