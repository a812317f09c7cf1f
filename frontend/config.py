"""Gateway settings, read from ``AKR_GATEWAY_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class GatewayConfig(BaseSettings):
    """Every field has a safe default: loopback only, worker pinning off, traces off."""

    model_config = SettingsConfigDict(env_prefix="AKR_GATEWAY_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on (loopback by default).")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    upstream_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL of the stock Dynamo frontend (OpenAI-compatible), no trailing /v1.",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger gets 413."
    )
    upstream_connect_timeout_s: float = Field(
        5.0, gt=0, description="Timeout to open a connection to the upstream; exceeded -> 504."
    )
    upstream_read_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Longest silence allowed from the upstream (before headers and between "
        "stream chunks); exceeded -> 504 before headers, an SSE error event after.",
    )
    pool_size: int = Field(
        256, ge=1, description="Maximum pooled keep-alive connections to the upstream."
    )
    keepalive_timeout_s: float = Field(
        30.0, gt=0, description="How long an idle upstream connection is kept in the pool."
    )
    upstream_quickack: bool = Field(
        True,
        description="Acknowledge each read from the upstream at once (TCP_QUICKACK, Linux). "
        "Dynamo 1.6.1's HTTP server does not set TCP_NODELAY, so without it each streamed "
        "token can wait for a delayed ACK (benchmarks.path_split: first token relayed in "
        "2.7-2.8 ms at p99 with it, 17-21 ms without).",
    )
    allow_worker_pin_headers: bool = Field(
        False,
        description="Forward client headers that pin a worker (x-dynamo-worker-instance-id and "
        "the like). Off: they are dropped, since any client could otherwise steer load.",
    )
    trace_path: Path | None = Field(
        None, description="JSONL file for per-request traces; None disables tracing."
    )
    trace_queue_size: int = Field(
        10_000, ge=1, description="Trace records buffered in memory; beyond that they are dropped."
    )
    trace_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Trace file size that triggers rotation."
    )
    trace_backups: int = Field(3, ge=0, description="Rotated trace files kept (path.1 ... path.N).")
    public_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated model names clients may use; others get 404 and are hidden "
        "from /v1/models (keeps the workers' internal model, which bypasses the processor, "
        "unreachable). Empty = no filter.",
    )
    request_read_timeout_s: float = Field(
        60.0, gt=0, description="A client must send a whole request within this time."
    )
    client_keepalive_timeout_s: float = Field(
        75.0, gt=0, description="Idle client keep-alive connections are closed after this."
    )
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics on GET /metrics.")
    log_level: str = Field("INFO", description="Python logging level of the gateway.")

    @field_validator("public_models", mode="before")
    @classmethod
    def _split_models(cls, v: object) -> object:
        if isinstance(v, str):
            return [m.strip() for m in v.split(",") if m.strip()]
        return v
