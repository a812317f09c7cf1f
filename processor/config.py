"""Processor configuration, read from ``AKR_PROCESSOR_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProcessorConfig(BaseSettings):
    """Tunables of the processor component; every field is documented in docs/CONFIG.md."""

    model_config = SettingsConfigDict(env_prefix="AKR_PROCESSOR_", extra="ignore")

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
    metrics_host: str = Field("127.0.0.1", description="Address the Prometheus endpoint binds.")
    metrics_port: int | None = Field(
        None, description="Port of the Prometheus /metrics endpoint; unset = not served."
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
        "deadline; otherwise it waits (highest priority, then latency sensitivity, first) and "
        "at the deadline gets 503 with Retry-After. Running conversations are never held. "
        "0 = off.",
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
