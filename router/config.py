"""Router configuration, read from ``AKR_ROUTER_*`` environment variables.

Only what an operator may need to change is a setting; each field's description is its row
in docs/CONFIG.md. The learner's internals (priors, noise, forgetting, scales) are constants
in router/bandit.py and router/feedback.py. The KV block size is not here: it comes from the
workers' model cards through the processor (``RouterService(block_size=...)``).

Settings declared ``tunable(...)`` (router/tunable.py) carry the range ``python -m
benchmarks.tune`` searches: only those that change a routing decision in the replay.

Units are in the field names: ``_ms`` milliseconds, ``_s`` seconds, ``_blocks`` KV blocks.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from router.envconfig import dynamo_path
from router.tunable import tunable


class RouterConfig(BaseSettings):
    """Tunables of the routing core (prefix table, score, learner, feedback)."""

    model_config = SettingsConfigDict(
        env_prefix="AKR_ROUTER_", extra="ignore", env_ignore_empty=True, allow_inf_nan=False
    )

    # --- Workers -----------------------------------------------------------------------
    worker_capacity_blocks: int = Field(
        16384,
        ge=1,
        description="KV capacity of a worker in blocks, for workers whose model card does not "
        "state it (the eviction and KV-full terms and the learner read it).",
    )

    # --- Conversations -----------------------------------------------------------------
    prefix_table_max_entries: int = Field(
        100_000,
        ge=1,
        description="Most conversations (prefix ids) tracked at once; beyond it the least "
        "recently seen one is forgotten (counted in akr_processor_prefix_evictions_total, or "
        "akr_router_prefix_evictions_total for a shared router).",
    )
    max_pin_ttl_s: float = Field(
        3600.0,
        gt=0,
        description="Upper bound on a client's cache_control TTL, so a client cannot pin "
        "capacity forever.",
    )

    # --- Score (router/cost.py) -------------------------------------------------------
    prefill_ms_per_token: float = Field(
        0.015,
        gt=0,
        json_schema_extra=tunable(0.003, 0.5, log=True),
        description="Prefill time per uncached or queued token (ms), the slope of the "
        "engine's prefill curve (router/cost.py): turns token and block counts into predicted "
        "milliseconds. Calibrate it to the engine.",
    )
    prefill_chunk_tokens: int = Field(
        8192,
        ge=0,
        description="The engines' prefill chunk (vLLM's max_num_batched_tokens): predicted "
        "prefill goes in passes of at most this many tokens, each with a fixed cost and a cost "
        "per token that grows with the pass (router/cost.py); 0 = linear in tokens, as "
        "Dynamo's KV cost. Unset, a processor takes the smallest max_num_batched_tokens of the "
        "workers' model cards; a standalone router uses this value.",
    )
    decode_block_weight: float = Field(
        0.25,
        ge=0,
        json_schema_extra=tunable(0.0, 2.0),
        description="Weight of a decode block on the worker against a prefill block (1.0 is "
        "Dynamo's weighting); lower because other sequences' decode steps barely delay a new "
        "prefill (docs/DESIGN.md).",
    )
    affinity_weight: float = Field(
        1.0,
        ge=0,
        json_schema_extra=tunable(0.0, 4.0),
        description="Weight of the value of keeping a conversation on the worker holding its "
        "cache while it has requests to come or a pin; 0 turns affinity off.",
    )
    affinity_cap_ms: float = Field(
        500.0,
        ge=0,
        json_schema_extra=tunable(5.0, 5000.0, log=True),
        description="Most predicted time to first token (ms) a request gives up for the "
        "future of its cache: it caps the affinity value, and no worker whose predicted TTFT "
        "(queued plus uncached prefill, plus the wait for KV blocks) is more than this behind "
        "the best one's is chosen.",
    )
    # --- Learner (router/bandit.py) ---------------------------------------------------
    bandit_enabled: bool = Field(
        True,
        json_schema_extra=tunable(choices=(True, False)),
        description="Use the per-worker latency corrections learned from the measured "
        "latency (learning goes on either way, so turning it back on starts informed).",
    )
    exploration: float = Field(
        0.25,
        ge=0,
        json_schema_extra=tunable(0.0, 1.0),
        description="Scale of the learner's posterior sampling (0 = its mean, no exploration); "
        "per request it shrinks with the latency_sensitivity hint and with the share of the "
        "prompt already cached somewhere.",
    )
    default_osl: int = Field(
        256,
        ge=1,
        description="Expected output tokens of a request with neither an osl hint nor a "
        "max_tokens (max_tokens, a cap, is taken as the expected length when there is no osl).",
    )
    feedback_timeout_s: float = Field(
        120.0,
        gt=0,
        description="A request whose end was not reported this long after its decision has "
        "its load released; if its worker never sent a first token, the learner also takes it "
        "as a timeout (a worker that answered is not penalised for a long generation). Keep it "
        "above the longest generation, or such requests stop counting as load early.",
    )
    seed: int | None = Field(
        None, description="Seed of the sampling RNG (for reproducible runs and tests)."
    )

    # --- Standalone component (python -m router) and learner persistence ---------------
    service_endpoint: str = Field(
        "agents.router",
        description="namespace.component of the standalone router (it serves .find_worker and "
        ".feedback); point AKR_PROCESSOR_ROUTER_ENDPOINT at the same value.",
    )
    state_path: Path | None = Field(
        None,
        description="JSON file of the learner's posterior: read at start, written every minute "
        "and at shutdown. Unset = not kept.",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the standalone router's /metrics endpoint binds."
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of the standalone router's Prometheus /metrics; unset = not served "
        "(the in-process router is exported by the processor).",
    )

    @field_validator("service_endpoint")
    @classmethod
    def _component_path(cls, v: str) -> str:
        return dynamo_path(v, 2)
