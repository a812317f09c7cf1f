"""A bad AKR_* value stops a component with a message naming the variable, not a traceback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

import frontend.__main__ as gateway_main
import processor.__main__ as processor_main
import router.__main__ as router_main
from deploy.local_stack import REPO_ROOT
from frontend.config import GatewayConfig
from processor.config import ProcessorConfig
from router.config import RouterConfig
from router.envconfig import load_settings
from tests.unit.gateway_process import spawn_gateway


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


def test_a_variable_that_names_no_setting_stops_the_component(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A typo, or a setting a newer version removed (AKR_ROUTER_KV_FULL_MS), used to leave
    its default in silence; other components' prefixes are theirs to check."""
    monkeypatch.setenv("AKR_ROUTER_DECODE_BLOCK_WIEGHT", "1.0")
    monkeypatch.setenv("AKR_ROUTER_KV_FULL_MS", "300")
    monkeypatch.setenv("AKR_GATEWAY_NOT_OURS", "1")
    with pytest.raises(SystemExit) as exc:
        load_settings(RouterConfig)
    lines = str(exc.value).splitlines()
    assert lines[1].startswith("  AKR_ROUTER_DECODE_BLOCK_WIEGHT: not a setting (did you mean")
    assert "AKR_ROUTER_DECODE_BLOCK_WEIGHT?" in lines[1]
    assert lines[2].startswith("  AKR_ROUTER_KV_FULL_MS: not a setting;")
    assert len(lines) == 3
    monkeypatch.delenv("AKR_ROUTER_DECODE_BLOCK_WIEGHT")
    monkeypatch.delenv("AKR_ROUTER_KV_FULL_MS")
    assert load_settings(RouterConfig).decode_block_weight == 0.25


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


@pytest.mark.parametrize(
    ("model", "variable"),
    [
        (RouterConfig, "AKR_ROUTER_DECODE_BLOCK_WEIGHT"),
        (RouterConfig, "AKR_ROUTER_PREFILL_MS_PER_TOKEN"),
        (GatewayConfig, "AKR_GATEWAY_STALL_TIMEOUT_S"),
        (ProcessorConfig, "AKR_PROCESSOR_FIRST_TOKEN_TIMEOUT_S"),
    ],
)
def test_infinity_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, model: type[BaseSettings], variable: str
) -> None:
    """'inf' passed every bound (ge=0, gt=0), and in the score 0 x inf is nan: with either of
    the first two at inf the router sent a request past the worker holding its cache."""
    monkeypatch.setenv(variable, "inf")
    with pytest.raises(SystemExit, match=f"{variable}='inf': Input should be a finite number"):
        load_settings(model)


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("AKR_PROCESSOR_WORKER_ENDPOINT", "garbage", "expected namespace.component.endpoint"),
        ("AKR_PROCESSOR_ENDPOINT", "agents.processor", "expected namespace.component.endpoint"),
        ("AKR_PROCESSOR_ENDPOINT", "agents..generate", "expected namespace.component.endpoint"),
        ("AKR_PROCESSOR_ROUTER_ENDPOINT", "agents.router.x", "expected namespace.component"),
        ("AKR_ROUTER_SERVICE_ENDPOINT", "router", "expected namespace.component"),
    ],
)
def test_a_dynamo_path_is_checked_before_the_runtime_starts(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    """Dynamo checks a path only when it first uses it: the processor's worker endpoint and
    the router's were a ValueError traceback after the runtime had started, the processor's
    own endpoint only once its first worker had loaded."""
    monkeypatch.setenv(variable, value)
    model = RouterConfig if variable.startswith("AKR_ROUTER_") else ProcessorConfig
    with pytest.raises(SystemExit, match=f"{variable}='{value}': Value error, {reason}$"):
        load_settings(model)


def test_good_dynamo_paths_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKR_PROCESSOR_WORKER_ENDPOINT", "dyn://workers.backend.generate")
    monkeypatch.setenv("AKR_PROCESSOR_ROUTER_ENDPOINT", "agents.router")
    config = load_settings(ProcessorConfig)
    assert config.worker_endpoint == "dyn://workers.backend.generate"
    assert config.router_endpoint == "agents.router"
    assert load_settings(RouterConfig).service_endpoint == "agents.router"


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("AKR_GATEWAY_UPSTREAM_URL", "notaurl", "expected an http://host"),
        ("AKR_GATEWAY_UPSTREAM_URL", "127.0.0.1:8000", "expected an http://host"),
        ("AKR_GATEWAY_UPSTREAM_URL", "http://127.0.0.1:99999", "Port out of range"),
        ("AKR_GATEWAY_UPSTREAM_URL", "http://127.0.0.1:8000/v1", "no trailing /v1"),
        ("AKR_GATEWAY_PROCESSOR_HEALTH_URL", "garbage", "expected an http://host"),
    ],
)
def test_a_bad_gateway_url_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    """Before, these passed the settings and the gateway died at start-up with a ValueError
    traceback from its HTTP client; a trailing /v1 started, and every request went to
    /v1/v1/... (404)."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit, match=f"{variable}='{value}': Value error, {reason}"):
        load_settings(GatewayConfig)


def test_good_gateway_urls_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKR_GATEWAY_UPSTREAM_URL", "http://frontend:8000/prefix")
    monkeypatch.setenv("AKR_GATEWAY_PROCESSOR_HEALTH_URL", "http://127.0.0.1:9095/health")
    config = load_settings(GatewayConfig)
    assert config.upstream_url == "http://frontend:8000/prefix"


def test_the_router_metrics_port_is_a_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: accepted, then an OverflowError traceback from prometheus_client's server."""
    monkeypatch.setenv("AKR_ROUTER_METRICS_PORT", "99999")
    with pytest.raises(SystemExit, match="AKR_ROUTER_METRICS_PORT='99999'"):
        load_settings(RouterConfig)


async def test_a_taken_gateway_port_is_one_line_naming_it() -> None:
    """Before: the socket's OSError traceback (the default 8080 taken, a second gateway)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await spawn_gateway("http://127.0.0.1:9", port, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith(
        f"the gateway cannot listen on 127.0.0.1:{port} (AKR_GATEWAY_HOST, AKR_GATEWAY_PORT): "
    )
    assert "address already in use" in last.lower()
    assert "Traceback" not in err.decode()


def test_processor_and_router_leave_no_file_in_tmpdir(tmp_path: Path) -> None:
    """Importing either entry module, and each start, wrote a logging-config file into
    $TMPDIR that nothing removed (Dynamo's SGLang logging set-up): thousands in /tmp after a
    day of tests. Logging is now set up in main(), after the settings, without that part."""
    started = textwrap.dedent(
        """
        import logging
        import processor.__main__ as p, router.__main__ as r
        for main in (p, r):
            main.uvloop.run = lambda coro: coro.close()
            main.main([])
        assert any(isinstance(h, logging.Handler) for h in logging.getLogger().handlers)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", started],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
