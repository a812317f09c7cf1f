"""Gateway settings, read from ``AKR_GATEWAY_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from frontend.upstream import split_http_url

DEFAULT_CONTEXT_TOKENS = 131072
BODY_OVERHEAD_BYTES = 1024 * 1024
JSON_ESCAPE_FACTOR = 3  # "\uXXXX" per UTF-8 byte pair, surrogate pairs: at most 3 x the text


class GatewayConfig(BaseSettings):
    """Every field has a safe default: loopback only, worker pinning off, traces off."""

    model_config = SettingsConfigDict(
        env_prefix="AKR_GATEWAY_", extra="ignore", env_ignore_empty=True, allow_inf_nan=False
    )

    host: str = Field("127.0.0.1", description="Address to listen on (loopback by default).")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    upstream_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL of the stock Dynamo frontend (OpenAI-compatible), no trailing /v1.",
    )
    max_body_bytes: int | None = Field(
        None,
        ge=1024,
        description="Largest request body accepted; larger gets 413. Unset = what a maximal "
        "prompt needs: context_tokens x max_bytes_per_token x 3 (JSON escaping of non-ASCII "
        "text) + 1 MiB for the other fields.",
    )
    context_tokens: int | None = Field(
        None,
        ge=1,
        description="The model context, in tokens, that prompts are checked against. Unset = "
        "the longest prompt a worker takes now, as the processor's /health reports it "
        "(prompt_limit, with processor_health_url set), else each model's context_window in the "
        "stock frontend's /v1/models (registered at the processor's start); both re-read every "
        f"10 s in the background. {DEFAULT_CONTEXT_TOKENS} for the body limit until then; a "
        "prompt of a model neither gives a limit for is not checked.",
    )
    max_bytes_per_token: float = Field(
        8.0,
        gt=0,
        description="Prompt rule without a tokenizer: a prompt whose text has more than "
        "context_tokens x this many UTF-8 bytes is rejected with 400 (common BPE tokenizers "
        "average about 4 bytes per token on English); shorter prompts are left to the engine.",
    )
    stall_timeout_s: float = Field(
        2.0,
        gt=0,
        description="A client that acknowledges no byte of its pending output for this long "
        "(its receive window shut) is disconnected (counted in "
        "akr_gateway_stalled_clients_total); its upstream stream is closed and its upstream "
        "slot freed. A client that reads something within every stall timeout, however "
        "little, is never dropped.",
    )
    client_buffer_bytes: int = Field(
        32 * 1024,
        ge=4096,
        description="Output buffered for one client, in the gateway and (as SO_SNDBUF, which "
        "the kernel doubles) in its socket; above it the upstream stream is no longer read "
        "until the client catches up.",
    )
    upstream_connections: int = Field(
        1024,
        ge=1,
        description="Concurrent requests to the stock frontend (upstream slots); more wait.",
    )
    slot_wait_s: float = Field(
        2.0,
        gt=0,
        description="Longest wait for an upstream slot; past it the request gets 503 with "
        "Retry-After (code gateway_busy).",
    )
    retry_after_s: int = Field(
        1,
        ge=0,
        description="Retry-After of the gateway's 503s: a full set of upstream slots or of "
        "client connections, and the processor's 'retry later' answers (no worker, admission), "
        "whose own retry time the stock frontend does not pass on.",
    )
    processor_health_url: str | None = Field(
        None,
        description="URL of the processor's readiness endpoint (GET, 200 = a worker is "
        "routable). Unset: readiness checks only that the stock frontend lists the models.",
    )
    ready_cache_s: float = Field(
        1.0, ge=0, description="How long a readiness verdict is reused before probing again."
    )
    upstream_read_timeout_s: float = Field(
        400.0,
        gt=0,
        description="Longest silence allowed from the upstream (before headers and between "
        "stream chunks; mid-stream it is noticed within twice this); exceeded -> 504 before "
        "headers, an SSE error event after. Keep it above the processor's longest wait for a "
        "first token, (AKR_PROCESSOR_MAX_RETRIES + 1) x AKR_PROCESSOR_FIRST_TOKEN_TIMEOUT_S "
        "(360 s by default), or a last retry is cut off.",
    )
    trace_path: Path | None = Field(
        None,
        description="JSONL trace, one line per completion request answered: ts (unix s), "
        "request_id (the x-request-id the answer carries: the client's when it is 1..128 "
        "characters of A-Z a-z 0-9 . _ : @ / + = -, else a new UUID; the processor's trace "
        "record has it as x_request_id), route, status, then either reject (the field a 4xx "
        "names) or latency_ms (until the upstream's answer was read), upstream_ttfb_ms (until "
        "its headers; null if none came) and hints (the validated agent hints; null "
        "without). Rotated at 64 MiB, 3 backups kept; unset = none.",
    )
    public_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated model names clients may use; others get 404 and are hidden "
        "from /v1/models (keeps the workers' internal model, which bypasses the processor, "
        "unreachable). Empty = no filter.",
    )
    log_level: str = Field("INFO", description="Python logging level of the gateway.")

    def body_limit(self, context_tokens: int | None = None) -> int:
        """``max_body_bytes``, or what a prompt of ``context_tokens`` needs (the setting, else
        the given context, else the default)."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        ctx = self.context_tokens or context_tokens or DEFAULT_CONTEXT_TOKENS
        return int(ctx * self.max_bytes_per_token * JSON_ESCAPE_FACTOR) + BODY_OVERHEAD_BYTES

    @field_validator("public_models", mode="before")
    @classmethod
    def _split_models(cls, v: object) -> object:
        if isinstance(v, str):
            return [m.strip() for m in v.split(",") if m.strip()]
        return v

    @field_validator("upstream_url")
    @classmethod
    def _upstream(cls, v: str) -> str:
        if split_http_url(v)[2].endswith("/v1"):
            raise ValueError("no trailing /v1: the gateway appends the client's /v1/... path")
        return v

    @field_validator("processor_health_url")
    @classmethod
    def _health_url(cls, v: str | None) -> str | None:
        if v is not None:
            split_http_url(v)
        return v

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        names = [n for n in logging.getLevelNamesMapping() if n not in ("NOTSET", "WARN", "FATAL")]
        if v.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown logging level; one of {', '.join(names)}")
        return v
