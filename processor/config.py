"""Processor configuration, read from ``AKR_PROCESSOR_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from router.envconfig import dynamo_path


class ProcessorConfig(BaseSettings):
    """Tunables of the processor component; every field is documented in docs/CONFIG.md."""

    model_config = SettingsConfigDict(
        env_prefix="AKR_PROCESSOR_", extra="ignore", env_ignore_empty=True, allow_inf_nan=False
    )

    model_name: str = Field(
        "akr-tiny", description="Public model name the processor registers; clients ask for it."
    )
    model_path: str = Field(
        ".model/akr-tiny",
        description="Model directory (tokenizer, chat template, config.json) the frontend uses.",
    )
    endpoint: str = Field(
        "agents.processor.generate",
        description="Dynamo endpoint (namespace.component.endpoint) the processor serves.",
    )
    worker_endpoint: str = Field(
        "workers.backend.generate",
        description="Dynamo endpoint of the workers (vLLM or mocker) the processor forwards to.",
    )
    block_size: int = Field(
        64,
        ge=1,
        description="KV block size in tokens, for workers whose model cards do not state it; "
        "the processor refuses to start when the cards disagree with a value set here.",
    )
    router_endpoint: str | None = Field(
        None,
        description=(
            "Endpoint prefix (namespace.component) of a standalone router "
            "(`python -m router`); unset = the router runs in-process (default)."
        ),
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the /metrics and /health endpoint binds."
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of the Prometheus /metrics endpoint and of /health (the readiness "
        "the gateway's processor_health_url points at); unset = neither is served.",
    )
    trace_path: Path | None = Field(
        None,
        description="JSONL request trace file (rotated at 64 MiB, 3 backups kept); unset = none.",
    )
    trace_queue_size: int = Field(
        2_000,
        ge=1,
        description="Trace records buffered in memory; beyond it they are dropped (counted). A "
        "record holds its prompt's block hashes, so size it by the memory it may take.",
    )
    trace_tokens: int = Field(
        0,
        ge=0,
        description="Log at most this many prompt/output token ids per trace record (0 = none).",
    )
    admission_deadline_s: float = Field(
        2.0,
        ge=0,
        description="Admission under overload: a new conversation's first request is placed "
        "only while some worker's predicted time to first token fits in what is left of this "
        "deadline (once its own prefill alone is longer than that, only its wait must fit); "
        "otherwise it waits (highest priority, then latency sensitivity, first) and "
        "at the deadline gets 503 with Retry-After; at most 1024 wait, beyond that 503 at once. "
        "Running conversations are never held: those the router tracks, i.e. sent with "
        "total_requests > 1 or a cache_control pin (a prefix_id alone makes every turn a first "
        "request). 0 = off.",
    )
    max_retries: int = Field(
        2,
        ge=0,
        description="Retries on another worker when a worker fails before the first token.",
    )
    first_token_timeout_s: float = Field(
        120.0, gt=0, description="A worker silent this long before its first token has failed."
    )
    worker_quarantine_s: float = Field(
        10.0,
        ge=0,
        description=(
            "A worker that just failed a request is left out of routing this long, so later "
            "requests do not try a dead worker until discovery drops it; ignored while every "
            "live worker is in quarantine. 0 = off."
        ),
    )
    no_worker_wait_s: float = Field(
        3.0,
        ge=0,
        description="With no routable worker, a request waits this long for one to appear, "
        "then fails as unavailable (the gateway answers 503 with Retry-After).",
    )
    expected_workers: int | None = Field(
        None,
        ge=1,
        description="Workers this processor should see; fewer routable marks it degraded in "
        "/health and in akr_processor_expected_workers. Unset = the most workers routable at "
        "once within expected_workers_window_s.",
    )
    expected_workers_window_s: float = Field(
        600.0,
        gt=0,
        description="Without expected_workers: how long a lost worker keeps the processor "
        "degraded before the smaller fleet counts as the expected one.",
    )
    migration_limit: int = Field(
        3,
        ge=0,
        description="Times one answer may be continued on another worker when its worker fails "
        "after the first token (prompt plus the tokens sent, max_tokens reduced); 0 = off.",
    )
    stream_stall_timeout_s: float = Field(
        30.0,
        ge=0,
        description="A worker silent this long between two outputs of a streaming answer has "
        "failed: the answer is continued on another worker (see migration_limit). 0 = no limit.",
    )

    @field_validator("endpoint", "worker_endpoint")
    @classmethod
    def _endpoint_path(cls, v: str) -> str:
        return dynamo_path(v, 3)

    @field_validator("router_endpoint")
    @classmethod
    def _component_path(cls, v: str | None) -> str | None:
        return None if v is None else dynamo_path(v, 2)
