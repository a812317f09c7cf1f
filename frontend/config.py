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
    upstream_read_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Longest silence allowed from the upstream (before headers and between "
        "stream chunks); exceeded -> 504 before headers, an SSE error event after.",
    )
    allow_worker_pin_headers: bool = Field(
        False,
        description="Forward client headers that pin a worker (x-dynamo-worker-instance-id and "
        "the like). Off: they are dropped, since any client could otherwise steer load.",
    )
    trace_path: Path | None = Field(
        None, description="JSONL file for per-request traces; None disables tracing."
    )
    public_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated model names clients may use; others get 404 and are hidden "
        "from /v1/models (keeps the workers' internal model, which bypasses the processor, "
        "unreachable). Empty = no filter.",
    )
    log_level: str = Field("INFO", description="Python logging level of the gateway.")

    @field_validator("public_models", mode="before")
    @classmethod
    def _split_models(cls, v: object) -> object:
        if isinstance(v, str):
            return [m.strip() for m in v.split(",") if m.strip()]
        return v
