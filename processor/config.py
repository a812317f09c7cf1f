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
        64, ge=1, description="KV block size of the workers, in tokens (vLLM default 64)."
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
        None, description="JSONL request trace file; unset = no traces."
    )
    trace_queue_size: int = Field(
        2_000,
        ge=1,
        description="Trace records buffered in memory; beyond it they are dropped. Counted in "
        "records: one holds its prompt's block hashes (~0.5k ints at 32k tokens), so 2000 ~ 40 MB.",
    )
    trace_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Rotate the trace file at this size."
    )
    trace_backups: int = Field(3, ge=0, description="Rotated trace files kept.")
    trace_tokens: int = Field(
        0,
        ge=0,
        description="Log at most this many prompt/output token ids per trace record (0 = none).",
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
            "requests do not try a dead worker until discovery drops it (about 10 s with file "
            "discovery); ignored while every live worker is in quarantine. 0 = off."
        ),
    )
    engine_poll_s: float = Field(
        0.05,
        ge=0,
        description=(
            "Period of reading the workers' own reports (KV capacity from their model cards, "
            "requests their engines hold back from forward-pass metrics; "
            "processor/engine_state.py). 0 = off: capacity from "
            "AKR_ROUTER_WORKER_CAPACITY_BLOCKS, no engine queue signal."
        ),
    )
    kv_event_threads: int = Field(
        4,
        ge=1,
        description=(
            "Threads of the processor's KvRouter indexer (Dynamo's `router_event_threads`: they "
            "apply the workers' KV events and answer the overlap query of every decision). "
            "Dynamo's default is 4; 1 made decisions slower on a 2-core machine "
            "(benchmarks/README.md)."
        ),
    )
    sweep_interval_s: float = Field(
        1.0,
        gt=0,
        description="Period of the background sweep (expiry, feedback timeouts, workers).",
    )
    gil_switch_interval_ms: float = Field(
        5.0,
        gt=0,
        description=(
            "Python's GIL switch interval in this process (sys.setswitchinterval). Dynamo's Rust "
            "threads need the GIL to hand every request and every streamed token to the event "
            "loop; while the loop runs Python they wait up to this long. Python's default is 5; "
            "0.5 showed no gain (benchmarks/README.md, 'GIL switch interval')."
        ),
    )
