"""The processor registers as the public model without fetching the model's weights."""

from __future__ import annotations

from types import SimpleNamespace
from unittest.mock import AsyncMock

import processor.__main__ as processor_main
from processor.config import ProcessorConfig


async def test_a_hugging_face_id_fetches_no_weights(monkeypatch) -> None:
    """Before: register_model ran with its default ignore_weights=False, so a Hugging Face id
    in AKR_PROCESSOR_MODEL_PATH (as the launcher and the Kubernetes graph give it) made the
    processor download the whole model (Dynamo's LocalModel::fetch) before it served, into a
    pod with no GPU and no volume for it. It needs the tokenizer, template and config only."""
    register = AsyncMock()
    monkeypatch.setattr(processor_main, "register_model", register)
    config = ProcessorConfig(model_path="Qwen/Qwen3-0.6B", model_name="public")
    handler = SimpleNamespace(prompt_limit=4096, block_size=64)
    endpoint = object()
    await processor_main.register_public_model(endpoint, config, handler)
    register.assert_awaited_once()
    args, kwargs = register.await_args
    assert args[2:5] == (endpoint, "Qwen/Qwen3-0.6B", "public")
    assert kwargs["ignore_weights"] is True
    assert kwargs["kv_cache_block_size"] == 64
    assert kwargs["runtime_config"].context_length == 4096
