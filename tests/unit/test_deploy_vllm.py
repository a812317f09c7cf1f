"""The GPU launcher's dry run: the commands are what the README says, the env file is complete.

No GPU and no vLLM here: the commands are parsed and checked against the configuration models,
the flags of the installed ai-dynamo 1.6.1 wheel and the process set of deploy/local_stack.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from deploy.local_stack import REPO_ROOT, LocalStack, StackConfig
from deploy.vllm import envfile
from deploy.vllm.launch import main as launch_main
from frontend.config import GatewayConfig
from processor.config import ProcessorConfig
from router.config import RouterConfig

ENV_FILE = REPO_ROOT / "deploy" / "vllm" / "akr.env"
README = REPO_ROOT / "README.md"


def dry_run(
    capsys: pytest.CaptureFixture[str], *args: str
) -> dict[str, tuple[dict[str, str], list[str]]]:
    """name -> (env set by the launcher, argv), parsed back from the printed lines."""
    launch_main(["--dry-run", *args])
    out = capsys.readouterr().out
    procs: dict[str, tuple[dict[str, str], list[str]]] = {}
    for line in out.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, command = line.partition(": ")
        words = shlex.split(command)
        assert words[0] == "env", line
        env: dict[str, str] = {}
        i = 1
        while i < len(words) and re.match(r"^[A-Z_][A-Z0-9_]*=", words[i]):
            key, _, value = words[i].partition("=")
            env[key] = value
            i += 1
        procs[name] = (env, words[i:])
    return procs


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture
def two_workers(capsys: pytest.CaptureFixture[str]) -> dict[str, tuple[dict[str, str], list[str]]]:
    return dry_run(
        capsys,
        "--workers",
        "2",
        "--model",
        "Qwen/Qwen3-0.6B",
        "--env-file",
        str(ENV_FILE),
        "--workdir",
        "/tmp/akr-test",
    )


def test_process_set_mirrors_the_local_stack(two_workers) -> None:
    assert list(two_workers) == ["worker0", "worker1", "processor", "frontend", "gateway"]
    assert two_workers["frontend"][1][:3] == ["python", "-m", "dynamo.frontend"]
    assert flag(two_workers["frontend"][1], "--router-mode") == "round-robin"
    assert two_workers["processor"][1] == ["python", "-m", "processor"]
    assert two_workers["gateway"][1] == ["python", "-m", "frontend"]


def test_processor_gets_every_variable_the_local_stack_gives_it(two_workers, monkeypatch) -> None:
    captured: dict[str, dict[str, str]] = {}
    monkeypatch.setattr(
        LocalStack, "_spawn", lambda self, name, argv, env=None: captured.update({name: env})
    )
    stack = LocalStack(StackConfig())
    try:
        stack._start_processor()
        stack._start_gateway()
    finally:
        shutil.rmtree(stack.workdir, ignore_errors=True)
    for name in ("processor", "gateway"):
        missing = set(captured[name]) - set(two_workers[name][0])
        assert not missing, f"{name}: the local stack sets {missing}, the GPU launcher does not"


def test_workers_one_gpu_each_with_kv_events_and_internal_registration(two_workers) -> None:
    proc_env = two_workers["processor"][0]
    ports, gpus, system_ports = set(), set(), set()
    for name in ("worker0", "worker1"):
        env, argv = two_workers[name]
        assert argv[:3] == ["python", "-m", "dynamo.vllm"]
        assert flag(argv, "--model") == "Qwen/Qwen3-0.6B"
        assert flag(argv, "--endpoint-types") == "none"
        assert flag(argv, "--served-model-name") != proc_env["AKR_PROCESSOR_MODEL_NAME"]
        assert flag(argv, "--endpoint") == f"dyn://{proc_env['AKR_PROCESSOR_WORKER_ENDPOINT']}"
        assert flag(argv, "--block-size") == proc_env["AKR_PROCESSOR_BLOCK_SIZE"]
        assert "--enable-prefix-caching" in argv
        kv = json.loads(flag(argv, "--kv-events-config"))
        assert (
            kv["publisher"] == "zmq"
            and kv["topic"] == "kv-events"
            and kv["enable_kv_cache_events"] is True
        )
        ports.add(kv["endpoint"].rsplit(":", 1)[1])
        gpus.add(env["CUDA_VISIBLE_DEVICES"])
        system_ports.add(env["DYN_SYSTEM_PORT"])
        assert env["DYN_FILE_KV"] == "/tmp/akr-test/dynamo_kv"
    assert len(ports) == len(gpus) == len(system_ports) == 2
    assert gpus == {"0", "1"} and system_ports == {"8081", "8082"}
    assert "DYN_SYSTEM_PORT" not in two_workers["frontend"][0]


def test_gateway_processor_and_frontend_agree(two_workers) -> None:
    proc_env = two_workers["processor"][0]
    gw_env = two_workers["gateway"][0]
    frontend_argv = two_workers["frontend"][1]
    assert (
        gw_env["AKR_GATEWAY_PUBLIC_MODELS"]
        == proc_env["AKR_PROCESSOR_MODEL_NAME"]
        == "Qwen/Qwen3-0.6B"
    )
    assert (
        gw_env["AKR_GATEWAY_UPSTREAM_URL"]
        == f"http://127.0.0.1:{flag(frontend_argv, '--http-port')}"
    )
    assert proc_env["AKR_PROCESSOR_METRICS_PORT"] == "9095"
    assert gw_env["AKR_GATEWAY_PORT"] == "8080"
    # Every AKR_ value the launcher sets is valid for its model.
    ProcessorConfig(**_fields(proc_env, "AKR_PROCESSOR_"))
    RouterConfig(**_fields(proc_env, "AKR_ROUTER_"))
    GatewayConfig(**_fields(gw_env, "AKR_GATEWAY_"))


def _fields(env: dict[str, str], prefix: str) -> dict[str, str]:
    return {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}


def test_etcd_discovery_uses_nats_and_no_file_store(capsys) -> None:
    procs = dry_run(
        capsys, "--workers", "1", "--model", "m", "--discovery", "etcd", "--start-infra"
    )
    assert list(procs)[:2] == ["etcd", "nats"]
    for name in ("worker0", "processor", "frontend"):
        env, argv = procs[name]
        assert env["DYN_DISCOVERY_BACKEND"] == "etcd" and env["DYN_EVENT_PLANE"] == "nats"
        assert "ETCD_ENDPOINTS" in env and "NATS_SERVER" in env and "DYN_FILE_KV" not in env
        if name != "processor":  # @dynamo_worker() scripts read only the environment
            assert flag(argv, "--discovery-backend") == "etcd"


def test_extra_vllm_flags_and_gpu_list(capsys) -> None:
    procs = dry_run(
        capsys, "--workers", "2", "--model", "m", "--gpus", "2,3", "--", "--max-model-len", "8192"
    )
    assert procs["worker1"][0]["CUDA_VISIBLE_DEVICES"] == "3"
    assert flag(procs["worker1"][1], "--max-model-len") == "8192"
    # --dry-run after "--" still means a dry run (it must never start GPU processes).
    launch_main(["--workers", "1", "--model", "m", "--", "--max-model-len", "1", "--dry-run"])
    assert "dynamo.vllm" in capsys.readouterr().out


def test_dynamo_flags_exist_in_the_installed_wheel(two_workers) -> None:
    """Dynamo-side flags of the worker and frontend commands exist in ai-dynamo 1.6.1."""
    import importlib.util

    root = Path(
        importlib.util.find_spec("dynamo.vllm").origin
    ).parent.parent  # dynamo: namespace pkg
    runtime_args = (root / "common" / "configuration" / "groups" / "runtime_args.py").read_text()
    for name in (
        "--endpoint",
        "--endpoint-types",
        "--discovery-backend",
        "--request-plane",
        "--event-plane",
    ):
        assert f'flag_name="{name}"' in runtime_args, name
    assert '"none"' in (root / "common" / "utils" / "endpoint_types.py").read_text()
    help_text = subprocess.run(
        [sys.executable, "-m", "dynamo.frontend", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ).stdout
    for word in two_workers["frontend"][1][3:]:
        if word.startswith("--"):
            assert word in help_text, f"dynamo.frontend has no {word}"


def test_env_file_names_every_config_variable_and_nothing_else() -> None:
    text = ENV_FILE.read_text()
    in_file = {v for v in envfile.variables_in(text) if v.startswith("AKR_")}
    in_models = set(envfile.model_variables())
    assert in_file == in_models, (
        f"missing {sorted(in_models - in_file)}, unknown {sorted(in_file - in_models)}: "
        "run python -m deploy.vllm.envfile"
    )
    # docs/CONFIG.md is generated from the same models; tests/unit/test_config_reference.py
    # holds it to them.


def test_env_file_active_values_validate() -> None:
    values = {k: v for k, v in dotenv_values(ENV_FILE).items() if k.startswith("AKR_") and v}
    GatewayConfig(**_fields(values, "AKR_GATEWAY_"))
    ProcessorConfig(**_fields(values, "AKR_PROCESSOR_"))
    RouterConfig(**_fields(values, "AKR_ROUTER_"))


def test_readme_dry_run_block_is_what_the_launcher_prints(capsys) -> None:
    """The README shows a command and its --dry-run output; they must match exactly."""
    text = README.read_text()
    m = re.search(r"```\n\$ (python -m deploy\.vllm\.launch [^\n]*--dry-run)\n(.*?)```", text, re.S)
    assert m, "README has no dry-run example"
    args = shlex.split(m.group(1))[3:]
    args.remove("--dry-run")
    launch_main([*args, "--dry-run"])
    assert capsys.readouterr().out.strip() == m.group(2).strip()


def test_the_stock_frontend_gets_the_body_limit_that_guards_the_processor(two_workers) -> None:
    """A huge prompt sent to the stock frontend directly gets 413 there instead of reaching the
    processor's event loop as millions of token ids (deploy/local_stack.py)."""
    from deploy.local_stack import FRONTEND_BODY_LIMIT_MB

    env = two_workers["frontend"][0]
    assert env["DYN_HTTP_BODY_LIMIT_MB"] == str(FRONTEND_BODY_LIMIT_MB)


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("AKR_PROCESSOR_BLOCK_SIZE=abc", "AKR_PROCESSOR_BLOCK_SIZE='abc'"),
        ("AKR_GATEWAY_PORT=abc", "AKR_GATEWAY_PORT='abc'"),
        ("AKR_ROUTER_EXPLORATION=-1", "AKR_ROUTER_EXPLORATION='-1'"),
        ("LAUNCH_FRONTEND_PORT=http", "LAUNCH_FRONTEND_PORT='http'"),
    ],
)
def test_a_bad_value_in_the_env_file_stops_the_launch_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, named: str
) -> None:
    """Before: --block-size abc went to vLLM as is, and a non-numeric port was a ValueError
    traceback; now the launcher stops before anything is printed or started."""
    env_file = tmp_path / "akr.env"
    env_file.write_text(line + "\n")
    with pytest.raises(SystemExit) as exc:
        launch_main(["--workers", "1", "--model", "m", "--env-file", str(env_file), "--dry-run"])
    assert named in str(exc.value)
    assert capsys.readouterr().out == ""


def test_an_env_file_that_does_not_exist_stops_the_launch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a mistyped --env-file path was read as an empty file, so the stack started on
    the defaults with none of the operator's settings, and nothing said so."""
    missing = tmp_path / "akr.envv"
    with pytest.raises(SystemExit) as exc:
        launch_main(["--workers", "1", "--model", "m", "--env-file", str(missing), "--dry-run"])
    assert str(missing) in str(exc.value)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("LAUNCH_GPU=4,5", "LAUNCH_GPUS"),
        ("AKR_ROUTER_EXPLORATON=0.1", "AKR_ROUTER_EXPLORATION"),
        ("HF_TOKEN=secret", None),
    ],
)
def test_a_variable_the_launcher_does_not_read_stops_the_launch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, named: str | None
) -> None:
    """Before: an unknown name in the env file was dropped without a word. LAUNCH_GPU=4,5
    put the workers on GPUs 0 and 1 (another job's, perhaps); a mistyped AKR_* variable went
    to the processor, which ignores names it does not know; other variables reached no
    process at all. Each is now named, with the closest known name."""
    env_file = tmp_path / "akr.env"
    env_file.write_text(line + "\n")
    with pytest.raises(SystemExit) as exc:
        launch_main(["--workers", "2", "--model", "m", "--env-file", str(env_file), "--dry-run"])
    message = str(exc.value)
    assert line.split("=")[0] in message
    if named:
        assert f"did you mean {named}?" in message
    assert capsys.readouterr().out == ""


def test_a_worker_endpoint_that_is_no_dynamo_path_stops_the_launch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the plan went out with ``--endpoint dyn://garbage`` for every worker and the
    processor, each failing only after it had started."""
    env_file = tmp_path / "akr.env"
    env_file.write_text("LAUNCH_WORKER_ENDPOINT=garbage\n")
    with pytest.raises(SystemExit, match="LAUNCH_WORKER_ENDPOINT='garbage': expected namespace"):
        launch_main(["--workers", "1", "--model", "m", "--env-file", str(env_file), "--dry-run"])
    assert capsys.readouterr().out == ""


def test_every_generated_env_file_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    """The template and the tuner's files (benchmarks/results/tune/*/akr.env) name only
    variables the launcher reads."""
    files = [ENV_FILE, *REPO_ROOT.glob("benchmarks/results/tune/*/akr.env")]
    assert len(files) > 1
    for path in files:
        launch_main(["--workers", "1", "--model", "m", "--env-file", str(path), "--dry-run"])
    assert "dynamo.vllm" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        # --env-file forgotten: the path, then every later flag, became vLLM arguments.
        ["deploy/vllm/akr.env", "--no-supervise"],
        # vLLM flags without the "--" separator.
        ["--max-model-len", "8192"],
    ],
)
def test_words_before_the_separator_must_be_launcher_flags(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: extra vLLM flags were a REMAINDER positional, so the first stray word swallowed
    every launcher flag after it into each worker's argv (--no-supervise went to vLLM, the
    stack was supervised; the env file was never read)."""
    with pytest.raises(SystemExit) as exc:
        launch_main(["--workers", "1", "--model", "m", *argv, "--dry-run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err and "after --" in err


def test_a_local_model_directory_reaches_workers_and_processor_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the processor got the directory resolved, the workers the word as typed; they
    run in the repository, not the caller's directory, and without a shell, so './qwen' or
    '~/qwen' named no directory there and vLLM took it for a hub id."""
    model = tmp_path / "qwen"
    model.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for typed in ("./qwen", "~/qwen"):
        procs = dry_run(capsys, "--workers", "1", "--model", typed)
        assert flag(procs["worker0"][1], "--model") == str(model.resolve())
        assert procs["processor"][0]["AKR_PROCESSOR_MODEL_PATH"] == str(model.resolve())


@pytest.mark.parametrize("typed", ["/models/nope", "./nope", "~/nope", "a/b/c"])
def test_a_model_path_that_names_no_directory_stops_the_launch(
    typed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a directory and not a Hugging Face id (org/name): before, the launcher started
    every process, and the mistake showed as a worker dying minutes into the launch."""
    with pytest.raises(SystemExit) as exc:
        launch_main(["--workers", "1", "--model", typed, "--dry-run"])
    assert typed in str(exc.value)
    assert capsys.readouterr().out == ""


def test_a_hugging_face_id_is_passed_as_is(capsys: pytest.CaptureFixture[str]) -> None:
    procs = dry_run(capsys, "--workers", "1", "--model", "Qwen/Qwen3-0.6B")
    assert flag(procs["worker0"][1], "--model") == "Qwen/Qwen3-0.6B"
    assert procs["processor"][0]["AKR_PROCESSOR_MODEL_PATH"] == "Qwen/Qwen3-0.6B"


def test_a_death_during_start_up_is_recorded_in_the_work_directory(tmp_path: Path) -> None:
    """Before: the failure line went to stderr only. launcher.log ended at 'waiting for
    model', and supervisor.json showed the dead process without its exit, so a launch run
    under nohup or systemd left no trace of why it stopped."""
    import signal
    import socket

    from deploy.vllm.launch import Plan, Process, run

    with socket.socket() as sock:  # a port nothing answers on: the stack never gets ready
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    plan = Plan(
        [Process("worker0", ["python", "-c", "raise SystemExit(3)"])],
        tmp_path,
        "127.0.0.1",
        port,
        port,
        None,
        [],
        "m",
    )
    saved = signal.getsignal(signal.SIGTERM)
    try:
        assert run(plan, ready_timeout_s=30, poll_s=0.05) == 1
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert "worker0 exited with 3 during start-up" in (tmp_path / "launcher.log").read_text()
    status = json.loads((tmp_path / "supervisor.json").read_text())
    assert status["components"]["worker0"]["last_exit"]["code"] == 3


def dynamo_reads(name: str) -> bool:
    """Whether the installed ai-dynamo wheel names ``name`` (Python sources or the Rust core)."""
    import importlib.util

    root = Path(importlib.util.find_spec("dynamo.runtime").origin).parent.parent
    if name.encode() in (root / "_core.abi3.so").read_bytes():
        return True
    return any(name in p.read_text(errors="replace") for p in root.rglob("*.py"))


def test_every_dynamo_variable_the_launchers_and_graph_set_exists(capsys) -> None:
    """A misspelt DYN_* variable is ignored by Dynamo without a word: each one the launcher
    prints (file and etcd discovery), akr.env lists or the Kubernetes graph sets must be a
    name the installed wheel knows."""
    import yaml

    names: set[str] = {n for n, _, _ in envfile.DYN_DEFAULTS}
    for extra in ([], ["--discovery", "etcd"]):
        for env, _ in dry_run(capsys, "--workers", "1", "--model", "m", *extra).values():
            names |= set(env)
    graph = REPO_ROOT / "deploy" / "k8s" / "dynamo-graph.yaml"
    for doc in yaml.safe_load_all(graph.read_text()):
        for comp in (doc or {}).get("spec", {}).get("components", []):
            for container in comp["podTemplate"]["spec"]["containers"]:
                names |= {e["name"] for e in container.get("env", [])}
    dynamo = {n for n in names if n.startswith(("DYN_", "ETCD_", "NATS_"))}
    assert len(dynamo) > 10
    assert not {n for n in dynamo if not dynamo_reads(n)}
