"""Local stack launcher: simulated workers, processor, stock frontend and gateway on loopback.

Everything binds to 127.0.0.1, discovery is file-based in a directory of the stack's own
(``DYN_FILE_KV``), so two stacks on one machine never see each other's workers.
Every process is started in its own process group and stopped by that group, so nothing the
launcher started outlives it; readiness is polled, never slept for.

Once the stack is up, a supervisor (deploy/supervisor.py) restarts any process that exits, or
that is alive but lost its discovery registration, with backoff; each restart is logged with
the process's name, exit code and runtime and counted in ``<workdir>/supervisor.json``. A
temporary work directory (logs, traces, discovery) is removed on stop only if nothing failed;
otherwise it is kept and its path printed.

    python -m deploy.local_stack --workers 4 --speedup 10      # prints URLs, Ctrl-C stops

Used by the tests and benchmarks as ``with LocalStack(StackConfig(...)) as stack: ...``.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.supervisor import (
    Backoff,
    Child,
    Supervisor,
    SupervisorThread,
    describe_code,
    signal_group,
    stop_groups,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / ".model" / "akr-tiny"
PUBLIC_MODEL = "akr-tiny"
# Workers register under an internal name so clients only address the processor's model.
WORKER_MODEL = "akr-internal-workers"
WORKER_ENDPOINT = "workers.backend.generate"
START_ATTEMPTS = 3
ROUTER_SERVICE = "agents.router"
# Dynamo's planes on loopback without etcd or NATS, as every Dynamo process of the stack runs.
LOOPBACK_PLANES = (
    "--discovery-backend",
    "file",
    "--request-plane",
    "tcp",
    "--event-plane",
    "zmq",
)
# --arm of the command line: our path, or the stock frontend's own --router-mode.
CLI_ARMS = ("ours", "kv", "round-robin", "random")


# The stock frontend's request body limit (Dynamo's DYN_HTTP_BODY_LIMIT_MB; its default is
# 45 MB). Why: it does not check a prompt against the context it lists, and a prompt reaches
# the processor as token ids that Dynamo's binding builds into one Python list on the
# processor's event loop before any check of ours runs: 10 MiB of text (7.4 million ids)
# held that loop 100-500 ms. A body of B bytes yields at most about B ids; measured at 2 MB,
# the largest prompt let through (1.9 MiB) cost one loop-lag sample of at most 25 ms (50 ms at
# 3 MB). Bigger bodies get 413 from the frontend itself. The gateway's own limit is the
# public one; this guards the direct path to the stock frontend.
FRONTEND_BODY_LIMIT_MB = 2


@dataclass
class StackConfig:
    """What to start. ``speeds`` gives one speed-up ratio per worker (heterogeneous mix)."""

    workers: int = 2
    speedup: float = 10.0
    speeds: list[float] | None = None
    gpu_blocks: int = 1024
    block_size: int = 64
    model_dir: Path = DEFAULT_MODEL_DIR
    # "ours": gateway -> stock frontend (round-robin) -> processor -> workers.
    # any Dynamo router mode ("kv", "round-robin", "random"): stock frontend straight to workers.
    arm: str = "ours"
    frontend_args: list[str] = field(default_factory=list)
    processor_env: dict[str, str] = field(default_factory=dict)
    # A standalone router component (python -m router) shared by `processors` processors;
    # off = each processor routes in-process (the default deployment).
    router_component: bool = False
    router_env: dict[str, str] = field(default_factory=dict)
    processors: int = 1
    gateway_env: dict[str, str] = field(default_factory=dict)
    mocker_args: list[str] = field(default_factory=list)
    # The worker program, started with the mocker's flags: a test engine can stand in
    # (tests/integration/recording_worker.py shows what the workers receive).
    worker_module: str = "dynamo.mocker"
    worker_env: dict[str, str] = field(default_factory=dict)
    # One mocker process per worker (else one process per distinct speed), so that a fault can
    # hit one worker of several.
    split_workers: bool = False
    workdir: Path | None = None
    # A temporary workdir (logs, traces, discovery) is removed by stop(): None = unless
    # something failed (start-up, or a process that died or lost its registration later);
    # True = never; False = always (tests that kill processes on purpose).
    keep_workdir: bool | None = None
    ready_timeout_s: float = 120.0
    # Restart processes that die or lose their registration once the stack is up.
    supervise: bool = True
    backoff: Backoff = field(default_factory=Backoff)

    def worker_speeds(self) -> list[float]:
        return list(self.speeds) if self.speeds else [self.speedup] * self.workers


LISTEN_PORTS_FROM = 10_000  # the lowest port handed out
_handed_out: collections.deque[int] = collections.deque(maxlen=1024)


def free_port() -> int:
    """A port free on loopback right now, below the kernel's ephemeral range.

    Why not the kernel's pick (bind to port 0): that comes from the ephemeral range, which
    every outgoing connection of the stack (ZMQ, the request plane, HTTP clients) also draws
    its source port from, so between the pick and the component's own bind one of them could
    take it (seen once: the gateway failed to start with "address already in use"). Ports
    below that range are never taken that way. A port handed out recently is not handed out
    again, so one launcher's components never share one."""
    low = _ephemeral_start()
    if low - LISTEN_PORTS_FROM < 1000:  # an unusual range: fall back to the kernel's pick
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(LISTEN_PORTS_FROM, low)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.append(port)
        return port
    raise RuntimeError(f"no free loopback port in {LISTEN_PORTS_FROM}-{low - 1}")


def _ephemeral_start() -> int:
    """Where the kernel's range for outgoing connections' source ports starts (Linux), else
    its default."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def loopback_env(file_kv: Path) -> dict[str, str]:
    """Dynamo settings for a stack that uses no etcd/NATS and binds only to loopback."""
    return {
        "DYN_DISCOVERY_BACKEND": "file",
        "DYN_REQUEST_PLANE": "tcp",
        "DYN_EVENT_PLANE": "zmq",
        "DYN_FILE_KV": str(file_kv),
        "DYN_TCP_RPC_HOST": "127.0.0.1",
        "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1",
        "DYN_EVENT_PLANE_HOST": "127.0.0.1",
        "DYN_SYSTEM_HOST": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


class StackError(RuntimeError):
    """The stack did not come up; the message names the process and the tail of its log."""


class LocalStack:
    """Start the processes of one stack; ``stop()`` (or leaving the ``with``) kills them all."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self._own_workdir = self.config.workdir is None
        self.workdir = Path(self.config.workdir or tempfile.mkdtemp(prefix="akr-stack-"))
        self.file_kv = self.workdir / "dynamo_kv"
        # Each Dynamo process writes a logging-config file into its temporary directory at
        # start-up and never removes it (dynamo.runtime.logging), one per process start: in the
        # work directory they go with it instead of piling up in the machine's /tmp.
        self.tmp_dir = self.workdir / "tmp"
        # Our components leave discovery on SIGTERM, then wait a grace period before stopping
        # their endpoints (Dynamo's default 5 s lets remote frontends notice). A local stack
        # is stopped as a whole, so it has nobody to warn.
        self.env = {
            **os.environ,
            **loopback_env(self.file_kv),
            "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "0",
            "TMPDIR": str(self.tmp_dir),
        }
        self.procs: list[Child] = []
        self.supervisor = Supervisor(
            self.procs,
            file_kv=self.file_kv,
            status_path=self.workdir / "supervisor.json",
            log=self._log,
            backoff=self.config.backoff,
            restart=self.config.supervise,
        )
        self._watch: SupervisorThread | None = None
        self.start_failed = False
        self._pick_ports()
        self.trace_path = self.workdir / "traces" / "processor.jsonl"

    # -- URLs ---------------------------------------------------------------------------------
    @property
    def frontend_url(self) -> str:
        return f"http://127.0.0.1:{self.frontend_port}"

    @property
    def gateway_url(self) -> str:
        if self.gateway_port is None:
            raise StackError(f"arm {self.config.arm!r} runs no gateway")
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def url(self) -> str:
        """Where clients send requests: the gateway in our arm, else the stock frontend."""
        return self.gateway_url if self.gateway_port is not None else self.frontend_url

    @property
    def model_name(self) -> str:
        return PUBLIC_MODEL if self.config.arm == "ours" else WORKER_MODEL

    @property
    def processor_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.processor_metrics_port}/metrics"

    # -- lifecycle ----------------------------------------------------------------------------
    def _pick_ports(self) -> None:
        self.frontend_port = free_port()
        self.gateway_port = free_port() if self.config.arm == "ours" else None
        self.processor_metrics_port = free_port() if self.config.arm == "ours" else None

    def __enter__(self) -> LocalStack:
        # A port picked free can be taken by another process before ours binds it (stacks
        # starting side by side): start again on fresh ports, at most START_ATTEMPTS times.
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self.start()
                return self
            except StackError as exc:
                self.stop(remove_workdir=False)
                if attempt == START_ATTEMPTS or "Address already in use" not in str(exc):
                    self.stop()
                    raise
                shutil.rmtree(self.file_kv, ignore_errors=True)
                self.procs.clear()
                self._pick_ports()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.start_failed = True
            raise
        self.start_failed = False
        self.supervisor.tick()  # attribute every registration now: the stack is up
        self.supervisor.write_status()
        self._watch = SupervisorThread(self.supervisor)
        self._watch.start()

    def _start(self) -> None:
        # A work directory used before holds the registrations of a stack that is gone.
        shutil.rmtree(self.file_kv, ignore_errors=True)
        self.file_kv.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        if not (self.config.model_dir / "tokenizer.json").exists():
            from deploy.make_model import build

            build(self.config.model_dir)
        self._start_workers()
        if self.config.arm == "ours":
            if self.config.router_component:
                self._start_router()
            for index in range(self.config.processors):
                self._start_processor(index)
            self._start_frontend(["--router-mode", "round-robin"])
            self._wait_model(self.frontend_url, PUBLIC_MODEL)
            self._start_gateway()
            self._wait_http(f"{self.gateway_url}/health")
            self._wait_answer(self.gateway_url, PUBLIC_MODEL)
        else:
            self._start_frontend(["--router-mode", self.config.arm])
            self._wait_model(self.frontend_url, WORKER_MODEL)
            self._wait_answer(self.frontend_url, WORKER_MODEL)

    @property
    def failed(self) -> bool:
        """Start-up failed, or a process died or lost its registration after it."""
        return self.start_failed or bool(self.supervisor.failures)

    def stop(self, remove_workdir: bool = True) -> None:
        """Stop supervising, SIGTERM every process group we started, then SIGKILL what is left.

        The workdir is kept (and its path printed) when anything failed, see ``keep_workdir``.
        """
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        with self.supervisor.lock:
            stop_groups([p.popen for p in reversed(self.procs) if p.popen is not None], 10.0)
        if self.workdir.exists():
            self.supervisor.write_status()  # the final counts
        if not remove_workdir or not self._own_workdir or not self.workdir.exists():
            return
        keep = self.config.keep_workdir
        if keep is None and self.failed:
            failures = ["start-up failed"] if self.start_failed else []
            self._log(
                f"stack work directory kept (logs, traces): {self.workdir}; failures: "
                + "; ".join([*failures, *self.supervisor.failures])
            )
        elif not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _log(self, line: str) -> None:
        """Launcher events go to stderr and to ``<workdir>/launcher.log``."""
        print(f"[local_stack] {line}", file=sys.stderr, flush=True)
        try:
            with open(self.workdir / "launcher.log", "a") as log:
                log.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        except OSError:
            pass

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.name.startswith("mocker")]

    def restarts(self, name: str) -> int:
        """How many times the supervisor restarted process ``name``."""
        return self.supervisor.restarts(name)

    def kill(self, name: str) -> None:
        """Kill one named process group (fault-injection in tests); the supervisor, when on,
        restarts it as it would any process that died."""
        with self.supervisor.lock:
            popens = [p.popen for p in self.procs if p.name == name and p.popen is not None]
            for popen in popens:
                signal_group(popen, signal.SIGKILL)
        for popen in popens:
            popen.wait(timeout=10)

    def signal(self, name: str, sig: int) -> None:
        """Send ``sig`` to one named process group (SIGSTOP freezes a worker, SIGCONT thaws)."""
        with self.supervisor.lock:
            for proc in self.procs:
                if proc.name == name:
                    signal_group(proc.popen, sig)

    def log_tail(self, name: str, lines: int = 40) -> str:
        for proc in self.procs:
            if proc.name == name:
                return "\n".join(proc.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    # -- processes ----------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        """Start one process in its own group (stop() kills exactly what it started); every
        process but the gateway registers in discovery."""
        child = Child(
            name,
            argv,
            {**self.env, **(extra_env or {})},
            self.workdir / f"{name}.log",
            cwd=REPO_ROOT,
            registers=name != "gateway",
        )
        child.log_path.unlink(missing_ok=True)  # a fresh log per stack start
        child.spawn(time.monotonic())
        self.procs.append(child)

    def _start_workers(self) -> None:
        speeds = self.config.worker_speeds()
        if self.config.split_workers:
            groups = [(speed, 1) for speed in speeds]
        else:
            groups = sorted(Counter(speeds).items())
        for index, (speed, count) in enumerate(groups):
            self._spawn_workers(f"mocker{index}", speed, count, self.config.gpu_blocks)

    def add_worker(self, gpu_blocks: int) -> str:
        """One more worker process in the running stack (a worker that joins later, with a KV
        capacity of its own); supervised and stopped like the others. Returns its name."""
        with self.supervisor.lock:
            name = f"mocker{sum(p.name.startswith('mocker') for p in self.procs)}"
            self._spawn_workers(name, self.config.speedup, 1, gpu_blocks)
        return name

    def _spawn_workers(self, name: str, speed: float, count: int, gpu_blocks: int) -> None:
        self._spawn(
            name,
            [
                sys.executable,
                "-m",
                self.config.worker_module,
                "--model-path",
                str(self.config.model_dir),
                "--model-name",
                WORKER_MODEL,
                "--endpoint",
                f"dyn://{WORKER_ENDPOINT}",
                "--num-workers",
                str(count),
                "--speedup-ratio",
                str(speed),
                "--num-gpu-blocks-override",
                str(gpu_blocks),
                "--block-size",
                str(self.config.block_size),
                *LOOPBACK_PLANES,
                *self.config.mocker_args,
            ],
            self.config.worker_env,
        )

    def _start_router(self) -> None:
        env = {
            "AKR_ROUTER_SERVICE_ENDPOINT": ROUTER_SERVICE,
            **self.config.router_env,
        }
        self._spawn("router", [sys.executable, "-m", "router"], env)

    def _start_processor(self, index: int = 0) -> None:
        """Processor 0 serves metrics and traces at the stack's advertised places."""
        name = "processor" if index == 0 else f"processor{index}"
        metrics_port = self.processor_metrics_port if index == 0 else free_port()
        env = {
            "AKR_PROCESSOR_MODEL_NAME": PUBLIC_MODEL,
            "AKR_PROCESSOR_MODEL_PATH": str(self.config.model_dir),
            "AKR_PROCESSOR_WORKER_ENDPOINT": WORKER_ENDPOINT,
            "AKR_PROCESSOR_METRICS_PORT": str(metrics_port),
            "AKR_PROCESSOR_TRACE_PATH": str(self.trace_path.with_name(f"{name}.jsonl")),
            **(
                {"AKR_PROCESSOR_ROUTER_ENDPOINT": ROUTER_SERVICE}
                if self.config.router_component
                else {}
            ),
            **self.config.processor_env,
        }
        self._spawn(name, [sys.executable, "-m", "processor"], env)

    def _start_frontend(self, router_args: list[str]) -> None:
        limit = {"DYN_HTTP_BODY_LIMIT_MB": str(FRONTEND_BODY_LIMIT_MB)}
        self._spawn(
            "frontend",
            [
                sys.executable,
                "-m",
                "dynamo.frontend",
                "--http-host",
                "127.0.0.1",
                "--http-port",
                str(self.frontend_port),
                *LOOPBACK_PLANES,
                *router_args,
                *self.config.frontend_args,
            ],
            {} if "DYN_HTTP_BODY_LIMIT_MB" in self.env else limit,  # an operator's value wins
        )

    def _start_gateway(self, extra: dict[str, str] | None = None) -> None:
        env = {
            **(extra or {}),
            "AKR_GATEWAY_HOST": "127.0.0.1",
            "AKR_GATEWAY_PORT": str(self.gateway_port),
            "AKR_GATEWAY_UPSTREAM_URL": self.frontend_url,
            "AKR_GATEWAY_PUBLIC_MODELS": PUBLIC_MODEL,
            "AKR_GATEWAY_PROCESSOR_HEALTH_URL": f"http://127.0.0.1:{self.processor_metrics_port}/health",
            **self.config.gateway_env,
        }
        self._spawn("gateway", [sys.executable, "-m", "frontend"], env)

    # -- readiness ----------------------------------------------------------------------------
    def _check_alive(self) -> None:
        for proc in self.procs:
            code = proc.popen.poll() if proc.popen is not None else None
            if code is not None:
                runtime = time.monotonic() - proc.started_at
                raise StackError(
                    f"{proc.name} exited with {describe_code(code)} during start-up after "
                    f"{runtime:.1f} s (work directory {self.workdir}):\n{self.log_tail(proc.name)}"
                )

    def _poll(self, what: str, probe: object) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        delay = 0.05
        while time.monotonic() < deadline:
            self._check_alive()
            if probe():  # type: ignore[operator]
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        tails = "\n".join(f"--- {p.name}.log\n{self.log_tail(p.name, 15)}" for p in self.procs)
        raise StackError(f"timed out waiting for {what}\n{tails}")

    def _wait_http(self, url: str) -> None:
        self._poll(url, lambda: _http_get(url) is not None)

    def _wait_model(self, base: str, model: str) -> None:
        def listed() -> bool:
            body = _http_get(f"{base}/v1/models")
            return body is not None and any(m.get("id") == model for m in body.get("data", []))

        self._poll(f"model {model} at {base}", listed)

    def _wait_answer(self, base: str, model: str) -> None:
        payload = {
            "model": model,
            "messages": [{"role": "user", "content": "ready?"}],
            "max_tokens": 1,
        }
        self._poll(
            f"an answer from {base}", lambda: _http_post(f"{base}/v1/chat/completions", payload)
        )


def _http_get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            data = resp.read()
            return json.loads(data) if data.startswith(b"{") else {}
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _http_post(url: str, payload: dict) -> bool:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive {kind.__name__}")
        return value

    return parse


def _speeds(text: str) -> list[float]:
    return [_positive(float)(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local_stack",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument(
        "--workers", type=_positive(int), default=2, help="simulated workers (default 2)"
    )
    parser.add_argument(
        "--speedup",
        type=_positive(float),
        default=10.0,
        help="the mocker's speed-up over its timing model, every worker (default 10)",
    )
    parser.add_argument(
        "--speeds", type=_speeds, default=None, help="comma list, one speed-up per worker"
    )
    parser.add_argument(
        "--gpu-blocks",
        type=_positive(int),
        default=1024,
        help="KV blocks of 64 tokens per worker (default 1024)",
    )
    parser.add_argument("--arm", default="ours", choices=CLI_ARMS, help=" | ".join(CLI_ARMS))
    parser.add_argument(
        "--split-workers", action="store_true", help="one mocker process per worker"
    )
    parser.add_argument(
        "--no-supervise",
        action="store_true",
        help="do not restart processes; stop the stack when one dies",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="logs, traces and discovery go here and stay after the stop (default: a "
        "temporary directory, removed when the stack stops cleanly)",
    )
    args = parser.parse_args(argv)
    config = StackConfig(
        workers=args.workers,
        speedup=args.speedup,
        speeds=args.speeds,
        gpu_blocks=args.gpu_blocks,
        arm=args.arm,
        split_workers=args.split_workers,
        supervise=not args.no_supervise,
        workdir=args.workdir,
    )
    stack = LocalStack(config)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    code = 0
    try:
        stack.start()
        print(f"stack ready (workdir {stack.workdir})")
        print(f"  clients:          {stack.url}/v1/chat/completions  model={stack.model_name}")
        print(f"  stock frontend:   {stack.frontend_url}")
        if config.arm == "ours":
            print(f"  processor metrics {stack.processor_metrics_url}")
            print(f"  processor traces  {stack.trace_path}")
        print(f"  supervisor status {stack.workdir / 'supervisor.json'}")
        print("Ctrl-C stops every process of this stack.", flush=True)
        # The supervisor thread restarts and reports; unsupervised, the first death ends it.
        while config.supervise or not stack.supervisor.failures:
            time.sleep(1.0)
        code = 1
    except StackError as exc:
        stack.start_failed = True
        print(f"stack failed to start: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
