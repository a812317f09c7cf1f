"""docs/CONFIG.md is generated from the configuration models and must not go stale."""

from __future__ import annotations

from deploy.config_reference import DOC, render
from frontend.config import GatewayConfig
from processor.config import ProcessorConfig
from router.config import RouterConfig


def test_config_reference_is_current() -> None:
    assert DOC.read_text() == render(), "run: python -m deploy.config_reference"


def test_every_field_is_documented() -> None:
    text = render()
    for model in (GatewayConfig, ProcessorConfig, RouterConfig):
        prefix = model.model_config["env_prefix"]
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name.upper()} has no description"
            assert f"`{prefix}{name.upper()}`" in text


def test_environment_overrides_defaults(monkeypatch) -> None:
    monkeypatch.setenv("AKR_ROUTER_EXPLORATION", "0.5")
    monkeypatch.setenv("AKR_PROCESSOR_MAX_RETRIES", "4")
    monkeypatch.setenv("AKR_GATEWAY_PUBLIC_MODELS", "a, b")
    assert RouterConfig().exploration == 0.5
    assert ProcessorConfig().max_retries == 4
    assert GatewayConfig().public_models == ["a", "b"]


def test_an_empty_value_means_unset(monkeypatch) -> None:
    """docker --env-file and Kubernetes `value: ""` pass empty strings: they must not turn a
    path into the working directory or fail an integer's validation."""
    monkeypatch.setenv("AKR_ROUTER_STATE_PATH", "")
    monkeypatch.setenv("AKR_ROUTER_SEED", "")
    monkeypatch.setenv("AKR_PROCESSOR_TRACE_PATH", "")
    monkeypatch.setenv("AKR_PROCESSOR_EXPECTED_WORKERS", "")
    monkeypatch.setenv("AKR_GATEWAY_TRACE_PATH", "")
    monkeypatch.setenv("AKR_GATEWAY_MAX_BODY_BYTES", "")
    router, processor, gateway = RouterConfig(), ProcessorConfig(), GatewayConfig()
    assert router.state_path is None and router.seed == RouterConfig.model_fields["seed"].default
    assert processor.trace_path is None and processor.expected_workers is None
    assert gateway.trace_path is None and gateway.max_body_bytes is None


def test_gateway_outwaits_the_processors_retries() -> None:
    """The gateway's upstream silence limit must outlast every attempt the processor makes
    before a first token, or its 504 cuts off the last retry."""
    gateway, processor = GatewayConfig(), ProcessorConfig()
    worst_first_token_s = (processor.max_retries + 1) * processor.first_token_timeout_s
    assert gateway.upstream_read_timeout_s > worst_first_token_s
