"""Router configuration, read from ``AKR_ROUTER_*`` environment variables.

Every tunable of the routing core lives here with a default and a description; the
descriptions are the documented configuration table (one env var per field, e.g.
``AKR_ROUTER_PREFILL_MS_PER_TOKEN=0.02``). Units are in the field names: ``_ms``
milliseconds, ``_s`` seconds, ``_blocks`` KV blocks, ``_tokens`` tokens.

Defaults are chosen so that, with the learner and affinity switched off, the score ranks
workers exactly like Dynamo's default KV router (see ``router/cost.py``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RouterConfig(BaseSettings):
    """Tunables of the routing core (prefix table, cost model, bandit, feedback)."""

    model_config = SettingsConfigDict(env_prefix="AKR_ROUTER_", extra="ignore")

    # --- KV geometry -------------------------------------------------------------------
    block_size: int = Field(
        64, ge=1, description="KV block size of the workers, in tokens (must match the engine)."
    )
    worker_capacity_blocks: int = Field(
        16384,
        ge=1,
        description="KV capacity of a worker in blocks, used when the worker does not report "
        "its own in its model card (the processor reads the cards: AKR_PROCESSOR_ENGINE_POLL_S; "
        "the eviction cost and the decode-utilization feature read it).",
    )

    # --- Prefix table ----------------------------------------------------------------
    prefix_table_max_entries: int = Field(
        100_000,
        ge=1,
        description="Maximum number of live prefixes (conversations) tracked; beyond it the "
        "least recently seen one is evicted (counted in metrics).",
    )
    prefix_idle_ttl_s: float = Field(
        600.0,
        gt=0,
        description="A prefix not seen for this long (and not pinned) is forgotten.",
    )
    max_pin_ttl_s: float = Field(
        3600.0,
        gt=0,
        description="Upper bound on a client-requested pin TTL, so a client cannot reserve "
        "capacity forever.",
    )
    sweep_batch: int = Field(
        2048,
        ge=1,
        description="Maximum entries inspected per background sweep call (prefix table, pin "
        "timers, pending feedback), keeping each sweep short.",
    )
    history_window_s: float = Field(
        120.0,
        ge=0,
        description="History fallback: when no worker reports KV overlap, the prefix's home "
        "worker is credited with its last prompt's blocks if it was seen within this window.",
    )

    # --- Cost model priors ----------------------------------------------------------
    prefill_ms_per_token: float = Field(
        0.015,
        gt=0,
        description="Prior prefill time per uncached or queued token (ms). Converts Dynamo's "
        "block counts into predicted TTFT milliseconds.",
    )
    queue_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of prefill tokens already queued on a worker relative to this "
        "request's own uncached tokens (1.0 = Dynamo's potential-prefill semantics).",
    )
    decode_ms_per_block: float | None = Field(
        None,
        ge=0,
        description="Cost (ms) per active decode block on a worker. Unset = "
        "decode_block_weight x prefill_ms_per_token x block_size.",
    )
    decode_block_weight: float = Field(
        0.25,
        ge=0,
        description="Weight of a decode block against a prefill block when decode_ms_per_block "
        "is unset. 1.0 = Dynamo's 1:1 weighting. 0.25 because other sequences' decode blocks "
        "barely delay a new prefill: at 1.0, 71 of 187 later agentic turns left their cache for "
        "load (benchmarks/README.md); at 0.25 the agentic hit ratio rose from 0.79 to 0.86 and "
        "heterogeneous TTFT p90 from 0.76x to 0.68x of Dynamo's kv router.",
    )
    sensitive_mix_weight: float = Field(
        0.0,
        ge=0,
        description="Extra weight, on top of the decode term, of the decode blocks of background "
        "requests (hint latency_sensitivity exactly 0) in flight on a worker, charged to a "
        "latency-sensitive request (latency_sensitivity > 0). 0 = off; requests without the hint "
        "are never charged (router/cost.py, benchmarks/README.md 'Latency classes').",
    )
    background_mix_weight: float = Field(
        0.0,
        ge=0,
        description="The other direction: a background request is charged its own blocks "
        "(prompt + expected output) at this weight of a decode block, per latency-sensitive "
        "request in flight on the worker (the delay it would add to each). 0 = off.",
    )
    active_request_ms: float = Field(
        0.0,
        ge=0,
        description="Cost (ms) per active request on a worker (max of Dynamo's count and our "
        "own in-flight count); 0 = Dynamo default (decode_active_request_weight=0).",
    )
    prefill_interference_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the delay this request's prefill adds to the requests already "
        "running on a worker: prefill_ms_per_token x uncached tokens x active requests. A cold "
        "prefill on a busy worker stalls every sequence batched with it; a cache hit costs them "
        "almost nothing. 0 = off (router/cost.py).",
    )
    affinity_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the affinity value (keeping a conversation on the worker "
        "holding its cache while reuse budget or pin lasts); 0 disables affinity.",
    )
    affinity_horizon: float = Field(
        4.0,
        gt=0,
        description="Number of remaining requests of a conversation at which the affinity "
        "value saturates.",
    )
    affinity_cap_ms: float = Field(
        500.0,
        ge=0,
        description="Upper bound of the affinity value (ms): a home worker more than this much "
        "worse than the best alternative loses the conversation.",
    )
    eviction_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the eviction cost: recompute time of other conversations' "
        "pinned blocks that placing this request on a full worker would push out.",
    )
    engine_waiting_ms: float = Field(
        0.0,
        ge=0,
        description="Cost (ms) per request a worker's engine reports holding back (waiting for "
        "KV blocks or batch budget, or preempted; processor/engine_state.py): a request sent "
        "there queues behind them. 0 = off.",
    )
    kv_full_ms: float = Field(
        300.0,
        ge=0,
        description="Cost (ms) of placing a request on a worker whose KV blocks it would not fit "
        "in: distinct blocks of our requests in flight there + this request's blocks not "
        "already held > the worker's capacity (then the engine makes it wait for blocks). "
        "Needs the prompt's block hashes: the processor sends them when its own value is > 0, "
        "so set it alike on processors and a standalone router. 0 = off. 300 because on the "
        "cache-pressure workload (4 repeats) it took our TTFT p99 from 1.96x to 0.98x of "
        "Dynamo's kv router's, hit ratio unchanged (benchmarks/README.md, point 4).",
    )

    # --- Bandit (contextual Thompson sampling on latency residuals) --------------------
    bandit_enabled: bool = Field(
        True, description="Learn per-worker latency corrections from feedback."
    )
    prior_variance: float = Field(
        0.02,
        gt=0,
        description="Prior variance of each TTFT regression weight (units of ttft_scale_ms "
        "per standardized feature): how far a new worker's TTFT may be from the model.",
    )
    itl_prior_variance: float = Field(
        0.005,
        gt=0,
        description="Prior variance of each ITL regression weight (units of itl_scale_ms per "
        "standardized feature): 0.005 = +/-0.7 ms per output token at one sigma.",
    )
    noise_variance: float = Field(
        0.25,
        gt=0,
        description="Observation noise variance of a standardized latency residual.",
    )
    forgetting: float = Field(
        0.995,
        gt=0,
        le=1,
        description="Per-observation discount of a worker's evidence toward the prior, so "
        "the learner follows drift (effective memory ~ 1/(1-forgetting) observations).",
    )
    idle_forgetting_per_s: float = Field(
        0.995,
        gt=0,
        le=1,
        description="Per-second discount applied by the background sweep to every worker "
        "(half-life ~140 s at 0.995), so a worker that stopped receiving traffic, e.g. after "
        "a slow spell, is retried within minutes.",
    )
    exploration: float = Field(
        0.25,
        ge=0,
        description="Scale of posterior sampling; per request divided by (1 + "
        "latency_sensitivity) and multiplied by the fraction of the prompt no worker has "
        "cached (0 for a conversation with a live home). 0 = greedy on the posterior mean. "
        "Below 1 because at cold start the prior "
        "spread (~15 ms) outweighs the prefill a cache hit saves on short prompts: measured "
        "on the demo workload, 1.0 kept 11/24 later turns on their cache, 0.25 kept 19/24.",
    )
    learned_feature_clip: bool = Field(
        False,
        description="Evaluate each worker's learned correction (its mean) at the features "
        "clipped to the range that worker has been observed at: slopes fitted on mostly cache "
        "hits are not extrapolated to a cold 3.5k-token prefill or an unusually busy worker, "
        "where they swung an agentic decision by 26-31 ms the wrong way (benchmarks/README.md, "
        "'The other half of that decision is the learner'). Exploration is unchanged.",
    )
    ttft_scale_ms: float = Field(
        100.0, gt=0, description="Unit (ms) of the standardized TTFT residual."
    )
    itl_scale_ms: float = Field(
        10.0, gt=0, description="Unit (ms per output token) of the standardized ITL residual."
    )
    itl_weight: float = Field(
        0.1,
        ge=0,
        description="Weight of the learned ITL correction x expected output tokens in the "
        "score. 1.0 would optimize predicted end-to-end time; the default favours TTFT (the "
        "agent's critical path) and keeps cold-start ITL uncertainty from drowning the "
        "cache-overlap signal.",
    )
    default_osl: int = Field(
        256, ge=1, description="Expected output tokens when the client gives no osl hint."
    )
    residual_clip: float = Field(
        50.0,
        gt=0,
        description="Standardized residuals are clipped to +/- this, so one outlier cannot "
        "wreck a worker's posterior.",
    )
    baseline_ema: float = Field(
        0.05,
        gt=0,
        le=1,
        description="EMA rate of the fleet-average residual; per-worker corrections are "
        "learned relative to it, so a new worker starts as an average one.",
    )
    feature_tokens_scale: float = Field(
        1000.0, gt=0, description="Token features are divided by this (k-tokens)."
    )
    active_requests_scale: float = Field(
        8.0, gt=0, description="The active-requests feature is divided by this."
    )

    # --- Feedback ------------------------------------------------------------------
    max_pending_feedback: int = Field(
        100_000,
        ge=1,
        description="Maximum decisions awaiting latency feedback; beyond it the oldest is "
        "dropped (counted).",
    )
    feedback_timeout_s: float = Field(
        120.0,
        gt=0,
        description="A decision without feedback after this long is expired with the timeout "
        "penalty.",
    )
    timeout_penalty_ms: float = Field(
        5000.0,
        ge=0,
        description="Observed TTFT assumed for a request whose feedback timed out.",
    )
    failure_penalty_ms: float = Field(
        2000.0,
        ge=0,
        description="Observed TTFT assumed for a request reported as failed (ok=False).",
    )

    # --- Misc ------------------------------------------------------------------------
    top_k: int = Field(
        3, ge=1, description="Number of best candidates (with score breakdown) in a decision."
    )
    seed: int | None = Field(
        None, description="Seed of the sampling RNG (set it for reproducible runs and tests)."
    )

    # --- Standalone component (python -m router) and learner persistence ---------------
    service_endpoint: str = Field(
        "agents.router",
        description="namespace.component of the standalone router; it serves "
        "<this>.find_worker and <this>.feedback. Processors point AKR_PROCESSOR_ROUTER_ENDPOINT "
        "at the same value.",
    )
    state_path: Path | None = Field(
        None,
        description="JSON file holding the learner's posterior: read at start, written every "
        "state_save_interval_s and at shutdown (from a worker thread). Unset = not persisted.",
    )
    state_save_interval_s: float = Field(
        60.0, gt=0, description="Period of the learner-state snapshots."
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the standalone router's /metrics endpoint binds."
    )
    metrics_port: int | None = Field(
        None,
        description="Port of the standalone router's Prometheus /metrics (akr_router_*); "
        "unset = not served. The in-process router is exported by the processor instead.",
    )

    @model_validator(mode="after")
    def _fill_derived(self) -> RouterConfig:
        if self.decode_ms_per_block is None:
            # In ms, one decode block weighs decode_block_weight blocks of prefill time
            # (Dynamo's cost function weighs them 1:1).
            self.decode_ms_per_block = (
                self.decode_block_weight * self.prefill_ms_per_token * self.block_size
            )
        return self

    @property
    def block_ms(self) -> float:
        """Prefill time of one full block (ms): the unit that converts blocks to ms."""
        return self.prefill_ms_per_token * self.block_size
