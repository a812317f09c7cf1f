"""Single-node launcher on real GPUs: N vLLM workers, the processor, the stock frontend and the
gateway.

    python -m deploy.vllm.launch --workers 4 --model Qwen/Qwen3-0.6B --dry-run
    python -m deploy.vllm.launch --workers 4 --model Qwen/Qwen3-0.6B --env-file deploy/vllm/akr.env
    python -m deploy.vllm.launch --workers 2 --model /models/qwen --discovery etcd --start-infra

Same process set as deploy/local_stack.py, with ``python -m dynamo.vllm`` in place of the mocker:

    gateway (python -m frontend)  ->  stock frontend (python -m dynamo.frontend, round-robin)
      ->  processor (python -m processor, router in-process, registered as the public model)
      ->  worker i (python -m dynamo.vllm, CUDA_VISIBLE_DEVICES=<gpu i>, KV events over ZMQ)

A standalone router (``python -m router``, AKR_PROCESSOR_ROUTER_ENDPOINT) is not started: the
router runs inside the processor.

``--dry-run`` prints one line per process, ``<name>: env K=V ... <argv>`` (shell-quoted, so
``shlex.split`` after the ``<name>: `` prefix gives back the exact environment and argv) and
exits: that is what tests/unit/test_deploy_vllm.py checks without a GPU. Without it every
process starts in its own process group (logs in the work directory) and Ctrl-C / SIGTERM stops
exactly those groups. Once the stack is ready a supervisor (deploy/supervisor.py) restarts a
process that exits, or (file discovery) a worker or processor that is alive but lost its
registration, with exponential backoff; each restart is printed with the process's name, exit
code and runtime and counted in ``<workdir>/supervisor.json``. ``--no-supervise`` stops the
stack at the first death instead. The work directory (logs, traces) is never removed.

Flags of ``python -m dynamo.vllm`` used here, checked in the ai-dynamo 1.6.1 wheel (vllm itself
is not installed on the build machine, so ``--help`` could not run):

* ``--endpoint dyn://ns.component.endpoint`` (env DYN_ENDPOINT), ``--discovery-backend``,
  ``--request-plane``, ``--event-plane``, ``--endpoint-types`` (env DYN_ENDPOINT_TYPES; ``none``
  registers the worker with ModelType.Empty: "topology-only workers fronted by another Dynamo
  service"): dynamo/common/configuration/groups/runtime_args.py and
  dynamo/common/utils/endpoint_types.py.
* ``--model``, ``--served-model-name``, ``--block-size``, ``--enable-prefix-caching``,
  ``--kv-events-config``: vLLM engine flags (AsyncEngineArgs) that dynamo/vllm/args.py passes
  through; args.py ``create_kv_events_config`` publishes KV events only when the user gives a
  ``--kv-events-config`` with ``enable_kv_cache_events: true`` and prefix caching is on, and
  dynamo/vllm/main.py subscribes to that endpoint with ``*`` replaced by 127.0.0.1.
* ``DYN_SYSTEM_PORT`` (worker /metrics and /health): string in _core.abi3.so; the frontend
  drops it on purpose (dynamo/frontend/main.py), so it is only given to workers.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from dotenv import dotenv_values  # python-dotenv, a dependency of pydantic-settings

from deploy.local_stack import REPO_ROOT, _http_get, loopback_env
from deploy.supervisor import Child, Exit, Supervisor, describe_code, stop_groups
from deploy.vllm.envfile import (
    AKR_OVERRIDES,
    DYN_DEFAULTS,
    ENV_FILE,
    LAUNCH_DEFAULTS,
    model_variables,
)
from frontend.config import GatewayConfig
from processor.config import ProcessorConfig
from router.config import RouterConfig
from router.envconfig import dynamo_path, load_settings

PY = "python"  # printed commands are meant for the node's environment (venv or container)


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # set on top of the inherited environment

    def command_line(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{self.name}: env {env} {shlex.join(self.argv)}".replace("env  ", "env ")


@dataclass
class Plan:
    processes: list[Process]
    workdir: Path
    host: str
    frontend_port: int
    gateway_port: int
    processor_metrics_port: int | None
    worker_system_ports: list[int]
    public_model: str
    # File discovery's directory: the supervisor watches registrations there (None = etcd).
    file_kv: Path | None = None


def read_env_file(path: Path | None) -> dict[str, str]:
    """KEY=VALUE lines of the env file (commented-out lines ignored); empty values dropped."""
    # Defaults of a GPU node = the active lines of the generated akr.env, so running without
    # --env-file behaves like running with the untouched template.
    values: dict[str, str] = dict(AKR_OVERRIDES)
    for name, value, _ in (*LAUNCH_DEFAULTS, *DYN_DEFAULTS):
        values[name] = value
    if path is not None:
        if not path.is_file():  # dotenv reads a missing file as an empty one
            raise SystemExit(f"--env-file {path}: no such file")
        in_file = dotenv_values(path)
        check_names(path, in_file.keys())
        for key, value in in_file.items():
            if value is not None and value != "":
                values[key] = value
            elif key in values and value == "":
                values[key] = ""
    return values


def known_names() -> set[str]:
    """Every variable the launcher reads from an env file (the names akr.env lists)."""
    return {n for n, _, _ in (*LAUNCH_DEFAULTS, *DYN_DEFAULTS)} | set(model_variables())


def check_names(path: Path, names: Iterable[str]) -> None:
    """Stop on a name the launcher would drop: a typo would silently leave its default."""
    known = known_names()
    unknown = [n for n in names if n not in known]
    if not unknown:
        return
    lines = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        lines.append(f"  {name}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise SystemExit(
        f"--env-file {path}: variables the launcher does not read:\n"
        + "\n".join(lines)
        + "\nIt reads the names deploy/vllm/akr.env lists; give any other variable (HF_TOKEN,"
        " VLLM_*, other DYN_*) to the launcher's own environment: every process inherits it."
    )


def build_plan(args: argparse.Namespace, knobs: dict[str, str]) -> Plan:
    n = args.workers
    if n < 1:
        raise SystemExit("--workers must be at least 1")
    host = knobs["LAUNCH_HOST"]
    loopback = _is_loopback(host)
    # Created by run(), not here: a dry run leaves nothing behind.
    workdir = Path(
        args.workdir
        or knobs["LAUNCH_WORKDIR"]
        or Path(tempfile.gettempdir()) / f"akr-vllm-{os.getpid()}"
    )
    discovery = args.discovery or knobs["DYN_DISCOVERY_BACKEND"]
    if discovery not in ("file", "etcd"):
        raise SystemExit(f"discovery must be file or etcd, not {discovery!r}")
    event_plane = "nats" if discovery == "etcd" else knobs["DYN_EVENT_PLANE"]
    request_plane = knobs["DYN_REQUEST_PLANE"]

    # Environment shared by every process: Dynamo planes and discovery.
    common: dict[str, str] = {}
    if loopback:
        common.update(loopback_env(workdir / "dynamo_kv"))  # binds + advertises 127.0.0.1 only
    common.update(
        {
            "DYN_DISCOVERY_BACKEND": discovery,
            "DYN_REQUEST_PLANE": request_plane,
            "DYN_EVENT_PLANE": event_plane,
            "DYN_LOG": knobs["DYN_LOG"],
            "HF_HUB_OFFLINE": knobs["HF_HUB_OFFLINE"],
        }
    )
    if discovery == "file":
        common["DYN_FILE_KV"] = str(workdir / "dynamo_kv")
    else:
        common.pop("DYN_FILE_KV", None)
        common["ETCD_ENDPOINTS"] = knobs["ETCD_ENDPOINTS"]
        common["NATS_SERVER"] = knobs["NATS_SERVER"]
    plane_flags = [
        "--discovery-backend",
        discovery,
        "--request-plane",
        request_plane,
        "--event-plane",
        event_plane,
    ]

    akr = {k: v for k, v in knobs.items() if k.startswith("AKR_")}
    # Check the AKR_* values before anything starts: a bad one stops here, named, instead of
    # reaching vLLM's flags or a component that dies on it minutes into the launch.
    for model in (GatewayConfig, ProcessorConfig, RouterConfig):
        load_settings(model, environ=akr)
    # The vLLM --block-size; the processor checks it against the workers' model cards.
    block_size = akr.get("AKR_PROCESSOR_BLOCK_SIZE", "64")
    worker_endpoint = knobs["LAUNCH_WORKER_ENDPOINT"]
    try:
        dynamo_path(worker_endpoint, 3)
    except ValueError as exc:
        raise SystemExit(f"LAUNCH_WORKER_ENDPOINT={worker_endpoint!r}: {exc}") from None
    if akr.get("AKR_PROCESSOR_WORKER_ENDPOINT", worker_endpoint) != worker_endpoint:
        raise SystemExit("AKR_PROCESSOR_WORKER_ENDPOINT must equal LAUNCH_WORKER_ENDPOINT")
    public_model = args.served_model_name or akr.get("AKR_PROCESSOR_MODEL_NAME") or args.model
    model_path = resolve_model(args.model)

    gpus = [g for g in (args.gpus or knobs["LAUNCH_GPUS"]).split(",") if g.strip()]
    if not gpus:
        gpus = [str(i) for i in range(n)]
    if len(gpus) < n:
        raise SystemExit(f"{n} workers need {n} GPU ids, got {gpus}")
    frontend_port = _port_knob(knobs, "LAUNCH_FRONTEND_PORT")
    system_base = _port_knob(knobs, "LAUNCH_WORKER_SYSTEM_PORT_BASE")
    kv_base = _port_knob(knobs, "LAUNCH_KV_EVENTS_PORT_BASE")
    kv_bind = "127.0.0.1" if loopback else "*"
    vllm_extra = shlex.split(knobs["LAUNCH_VLLM_ARGS"]) + list(args.vllm_args or [])

    procs: list[Process] = []
    if args.start_infra and discovery == "etcd":
        procs.append(
            Process(
                "etcd",
                [
                    "etcd",
                    "--data-dir",
                    str(workdir / "etcd"),
                    "--listen-client-urls",
                    knobs["ETCD_ENDPOINTS"],
                    "--advertise-client-urls",
                    knobs["ETCD_ENDPOINTS"],
                ],
            )
        )
        nats_port = knobs["NATS_SERVER"].rsplit(":", 1)[-1]
        procs.append(
            Process(
                "nats",
                [
                    "nats-server",
                    "-js",
                    "-a",
                    host if loopback else "0.0.0.0",
                    "-p",
                    nats_port,
                    "-sd",
                    str(workdir / "nats"),
                ],
            )
        )

    system_ports = []
    for i in range(n):
        kv_events = {
            "publisher": "zmq",
            "topic": "kv-events",
            "endpoint": f"tcp://{kv_bind}:{kv_base + i}",
            "enable_kv_cache_events": True,
        }
        system_ports.append(system_base + i)
        procs.append(
            Process(
                f"worker{i}",
                [
                    PY,
                    "-m",
                    "dynamo.vllm",
                    "--model",
                    model_path,
                    "--served-model-name",
                    knobs["LAUNCH_WORKER_MODEL"],
                    "--endpoint",
                    f"dyn://{worker_endpoint}",
                    "--endpoint-types",
                    "none",
                    "--block-size",
                    block_size,
                    "--enable-prefix-caching",
                    "--kv-events-config",
                    json.dumps(kv_events, separators=(",", ":")),
                    *plane_flags,
                    *vllm_extra,
                ],
                {
                    **common,
                    "CUDA_VISIBLE_DEVICES": gpus[i].strip(),
                    "DYN_SYSTEM_PORT": str(system_base + i),
                },
            )
        )

    metrics_port = akr.get("AKR_PROCESSOR_METRICS_PORT")
    processor_env = {
        **common,
        "AKR_PROCESSOR_MODEL_NAME": public_model,
        "AKR_PROCESSOR_MODEL_PATH": model_path,
        "AKR_PROCESSOR_WORKER_ENDPOINT": worker_endpoint,
        "AKR_PROCESSOR_METRICS_HOST": host,
        "AKR_PROCESSOR_TRACE_PATH": str(workdir / "traces" / "processor.jsonl"),
        **{k: v for k, v in akr.items() if k.startswith(("AKR_PROCESSOR_", "AKR_ROUTER_"))},
    }
    procs.append(Process("processor", [PY, "-m", "processor"], processor_env))
    procs.append(
        Process(
            "frontend",
            [
                PY,
                "-m",
                "dynamo.frontend",
                "--http-host",
                host,
                "--http-port",
                str(frontend_port),
                "--router-mode",
                "round-robin",
                *plane_flags,
            ],
            {**common, "DYN_HTTP_BODY_LIMIT_MB": knobs["DYN_HTTP_BODY_LIMIT_MB"]},
        )
    )
    upstream_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    gateway_env = {
        "AKR_GATEWAY_HOST": host,
        "AKR_GATEWAY_UPSTREAM_URL": f"http://{upstream_host}:{frontend_port}",
        "AKR_GATEWAY_PUBLIC_MODELS": public_model,
        **(
            {"AKR_GATEWAY_PROCESSOR_HEALTH_URL": f"http://{upstream_host}:{metrics_port}/health"}
            if metrics_port
            else {}
        ),
        **{k: v for k, v in akr.items() if k.startswith("AKR_GATEWAY_")},
    }
    gateway_port = int(gateway_env.get("AKR_GATEWAY_PORT", "8080"))
    procs.append(Process("gateway", [PY, "-m", "frontend"], gateway_env))
    return Plan(
        procs,
        workdir,
        host,
        frontend_port,
        gateway_port,
        int(metrics_port) if metrics_port else None,
        system_ports,
        public_model,
        workdir / "dynamo_kv" if discovery == "file" else None,
    )


def resolve_model(model: str) -> str:
    """A local directory as an absolute path (the processes run in the repository, without a
    shell), a Hugging Face id as is. A word that is neither stops here: vLLM would take it for
    a hub id and fail only once every process had started."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:  # not org/name
        raise SystemExit(f"--model {model}: no such directory (a Hugging Face id is org/name)")
    return model


def _port_knob(knobs: dict[str, str], name: str) -> int:
    try:
        port = int(knobs[name])
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise SystemExit(f"invalid configuration: {name}={knobs[name]!r}: not a port (1-65535)")
    return port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# -- running ----------------------------------------------------------------------------------
# Processes that register in Dynamo discovery (the gateway and the infrastructure do not).
UNREGISTERED = ("gateway", "etcd", "nats")


def run(plan: Plan, ready_timeout_s: float, supervise: bool = True, poll_s: float = 2.0) -> int:
    """Start the plan, wait until the gateway lists the model, then supervise until Ctrl-C /
    SIGTERM (or, unsupervised, the first death). Returns the exit status."""
    plan.workdir.mkdir(parents=True, exist_ok=True)
    (plan.workdir / "traces").mkdir(exist_ok=True)
    launcher_log = plan.workdir / "launcher.log"

    def log(line: str, stream: TextIO = sys.stdout) -> None:
        print(line, file=stream, flush=True)
        with open(launcher_log, "a") as out:
            out.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    children: list[Child] = []
    supervisor = Supervisor(
        children,
        file_kv=plan.file_kv,
        status_path=plan.workdir / "supervisor.json",
        log=log,
        restart=supervise,
    )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    status = 0
    try:
        for proc in plan.processes:
            if not shutil.which(proc.argv[0]) and proc.argv[0] != PY:
                raise SystemExit(f"{proc.argv[0]} not found on PATH (needed by {proc.name})")
            argv = [sys.executable, *proc.argv[1:]] if proc.argv[0] == PY else proc.argv
            child = Child(
                proc.name,
                argv,
                {**os.environ, **proc.env},
                plan.workdir / f"{proc.name}.log",
                cwd=REPO_ROOT,
                registers=proc.name not in UNREGISTERED,
            )
            child.spawn(time.monotonic())
            children.append(child)
            log(f"started {proc.name} (pid {child.pid}, log {child.log_path})")
        base = f"http://{'127.0.0.1' if plan.host in ('0.0.0.0', '::') else plan.host}"
        gateway = f"{base}:{plan.gateway_port}"
        deadline = time.monotonic() + ready_timeout_s
        log(
            f"waiting for model {plan.public_model!r} at {gateway}/v1/models "
            "(vLLM loads weights and captures graphs: minutes)"
        )
        while True:
            _check_started(children, plan.workdir)
            body = _http_get(f"{gateway}/v1/models")
            if body and any(m.get("id") == plan.public_model for m in body.get("data", [])):
                break
            if time.monotonic() > deadline:
                raise SystemExit(
                    "timed out waiting for the stack; see the logs in " + str(plan.workdir)
                )
            time.sleep(poll_s)
        log("stack ready")
        print(f"  clients:           {gateway}/v1/chat/completions  model={plan.public_model}")
        print(f"  gateway metrics:   {gateway}/metrics")
        print(f"  frontend metrics:  {base}:{plan.frontend_port}/metrics")
        if plan.processor_metrics_port:
            print(f"  processor metrics: {base}:{plan.processor_metrics_port}/metrics")
        worker_urls = ", ".join(f"{base}:{p}/metrics" for p in plan.worker_system_ports)
        print(f"  worker metrics:    {worker_urls}")
        print(f"  supervisor status: {plan.workdir / 'supervisor.json'}")
        print("Ctrl-C stops every process of this stack.", flush=True)
        supervisor.tick()  # attribute every registration now: the stack is up
        supervisor.write_status()
        while supervise or not supervisor.failures:
            supervisor.guarded_tick()
            time.sleep(0.5)
        status = 1
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:  # the reason the launch ends: kept in launcher.log too
        log(str(exc), sys.stderr)
        status = 1
    finally:
        _stop(children)
        supervisor.write_status()  # the final counts, even when a signal cut a tick short
        if status or supervisor.failures:
            log(f"work directory kept (logs, traces): {plan.workdir}", sys.stderr)
    return status


def _check_started(children: list[Child], workdir: Path) -> None:
    """Before the stack is ready a death ends the launch: report it, do not restart it."""
    for child in children:
        code = child.popen.poll() if child.popen is not None else None
        if code is not None:
            runtime = time.monotonic() - child.started_at
            child.last_exit = Exit(code, runtime, "exited")  # for supervisor.json
            raise SystemExit(
                f"{child.name} exited with {describe_code(code)} during start-up after "
                f"{runtime:.1f} s; see {child.log_path}"
            )


def _stop(children: list[Child]) -> None:
    stop_groups([c.popen for c in reversed(children) if c.popen is not None], 20.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.vllm.launch",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument(
        "--workers", type=int, required=True, help="number of vLLM workers (one GPU each)"
    )
    parser.add_argument("--model", required=True, help="Hugging Face id or local model directory")
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="public model name clients use (default: AKR_PROCESSOR_MODEL_NAME, else --model)",
    )
    parser.add_argument(
        "--discovery",
        choices=["file", "etcd"],
        default=None,
        help="file (default, single node) or etcd (+NATS event plane)",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help=f"KEY=VALUE file of every knob (template: {ENV_FILE.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--gpus", default=None, help="comma list of GPU ids (default LAUNCH_GPUS, else 0..N-1)"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--start-infra",
        action="store_true",
        help="with --discovery etcd: also start etcd and nats-server from PATH",
    )
    parser.add_argument("--ready-timeout", type=float, default=1800.0)
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    parser.add_argument(
        "--no-supervise",
        action="store_true",
        help="do not restart processes; stop the stack when one dies",
    )
    parser.usage = parser.format_usage().removeprefix("usage: ").rstrip() + " [-- VLLM_FLAGS ...]"
    parser.epilog = "-- VLLM_FLAGS ...: extra vLLM engine flags for every worker, after --."
    own, vllm_args = split_at_separator(sys.argv[1:] if argv is None else list(argv))
    args, stray = parser.parse_known_args(own)
    if stray:  # a stray word must not turn the launcher flags after it into vLLM's
        parser.error(f"unrecognized arguments: {' '.join(stray)} (vLLM flags go after --)")
    args.vllm_args = vllm_args
    if "--dry-run" in args.vllm_args:  # never start GPUs because the flag came after "--"
        args.vllm_args.remove("--dry-run")
        args.dry_run = True
    return args


def split_at_separator(argv: list[str]) -> tuple[list[str], list[str]]:
    """The launcher's words and the vLLM flags after the first ``--``."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    knobs = read_env_file(args.env_file)
    plan = build_plan(args, knobs)
    if args.dry_run:
        for proc in plan.processes:
            print(proc.command_line())
        return
    sys.exit(run(plan, args.ready_timeout, supervise=not args.no_supervise))


if __name__ == "__main__":
    main()
