"""Processor configuration, read from ``AKR_PROCESSOR_*`` environment variables."""

from __future__ import annotations

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
