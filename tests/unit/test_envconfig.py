"""A bad AKR_* value stops a component with a message naming the variable, not a traceback."""

from __future__ import annotations

import pytest

import frontend.__main__ as gateway_main
import processor.__main__ as processor_main
import router.__main__ as router_main
from frontend.config import GatewayConfig
from router.config import RouterConfig
from router.envconfig import load_settings


def _never_run(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("started although the configuration is invalid")


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKR_GATEWAY_PORT", "abc")
    monkeypatch.setenv("AKR_GATEWAY_STALL_TIMEOUT_S", "-1")
    with pytest.raises(SystemExit) as exc:
        load_settings(GatewayConfig)
    text = str(exc.value)
    assert "AKR_GATEWAY_PORT='abc'" in text
    assert "AKR_GATEWAY_STALL_TIMEOUT_S='-1'" in text
    assert "Traceback" not in text


def test_good_values_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKR_ROUTER_EXPLORATION", "0.5")
    assert load_settings(RouterConfig).exploration == 0.5


def test_unknown_log_level_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKR_GATEWAY_LOG_LEVEL", "loud")
    with pytest.raises(SystemExit, match="AKR_GATEWAY_LOG_LEVEL='loud'"):
        load_settings(GatewayConfig)
    monkeypatch.setenv("AKR_GATEWAY_LOG_LEVEL", "debug")
    assert load_settings(GatewayConfig).log_level == "debug"


def test_gateway_names_the_flag_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_main.uvloop, "run", _never_run)
    with pytest.raises(SystemExit, match="--port=70000"):
        gateway_main.main(["--port", "70000"])
    monkeypatch.setenv("AKR_GATEWAY_PORT", "abc")
    with pytest.raises(SystemExit, match="AKR_GATEWAY_PORT='abc'"):
        gateway_main.main([])


def test_processor_and_router_stop_before_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processor_main.uvloop, "run", _never_run)
    monkeypatch.setenv("AKR_PROCESSOR_BLOCK_SIZE", "abc")
    with pytest.raises(SystemExit, match="AKR_PROCESSOR_BLOCK_SIZE='abc'"):
        processor_main.main([])
    monkeypatch.delenv("AKR_PROCESSOR_BLOCK_SIZE")
    monkeypatch.setenv("AKR_ROUTER_EXPLORATION", "lots")
    with pytest.raises(SystemExit, match="AKR_ROUTER_EXPLORATION='lots'"):
        processor_main.main([])
    with pytest.raises(SystemExit, match="AKR_ROUTER_EXPLORATION='lots'"):
        router_main.main([])
