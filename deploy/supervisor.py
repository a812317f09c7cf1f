"""Keep a stack's processes running, as a Kubernetes pod restart would on one machine.

A child is restarted when it exits, or, with file discovery, when it is alive but its
registration vanished: a process frozen past its discovery lease (SIGSTOP for ~10 s) has its
entries removed and, once thawed, only logs ``keep_alive failed`` and never serves again.
Restarts back off exponentially (a long healthy run resets the delay) and are counted, logged
one line each, and written to a JSON status file next to the logs.

Both launchers (deploy/local_stack.py, deploy/vllm/launch.py) drive it: ``tick()`` once per
poll interval, from a thread (local stack, used in-process by tests) or the main loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.registrations import group_listening_ports, registrations

MAX_FAILURES_KEPT = 100


@dataclass(frozen=True)
class Backoff:
    """Delay before restart n+1 after n quick failures: base, 2 x base, ... up to the cap."""

    base_s: float = 0.5
    cap_s: float = 30.0
    # A run at least this long counts as healthy: the next failure restarts after base_s.
    healthy_after_s: float = 60.0

    def delay_s(self, streak: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** max(0, streak - 1))


@dataclass
class Exit:
    """Why a child's run ended: its exit code (None when it was killed for a lost
    registration, or could not be started) and how long it ran."""

    code: int | None
    runtime_s: float
    reason: str

    def describe(self, name: str, pid: int) -> str:
        if self.reason == "lost registration":
            return (
                f"{name} (pid {pid}) lost its discovery registration while alive after "
                f"{self.runtime_s:.1f} s; killed"
            )
        if self.reason.startswith("restart failed"):
            return f"{name} could not be started: {self.reason}"
        code = describe_code(self.code)
        return f"{name} (pid {pid}) exited with {code} after {self.runtime_s:.1f} s"


def describe_code(code: int | None) -> str:
    """``-9`` -> ``-9 (SIGKILL)``: Popen's negative codes are signals."""
    if code is not None and code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


@dataclass
class Child:
    """One supervised process: how to start it, and its current run."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    # Watch its discovery registration (Dynamo components; not the gateway).
    registers: bool = True
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    streak: int = 0
    restart_at: float | None = None
    last_exit: Exit | None = None
    # Its run ended and it stays down (supervision off).
    down: bool = False
    registered: set[str] = field(default_factory=set)
    # When each of its registered entries was first seen missing (cleared when it is back).
    missing_since: dict[str, float] = field(default_factory=dict)

    def spawn(self, now: float) -> None:
        """Start a run; the log is appended to, so earlier runs stay readable."""
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # own process group: stopped as a whole, nothing leaks
            )
        self.started_at = now
        self.restart_at = None
        self.registered = set()
        self.missing_since = {}

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else -1


def signal_group(popen: subprocess.Popen[bytes] | None, sig: int) -> None:
    if popen is None:
        return
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_groups(running: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM every process group, wait up to ``grace_s`` in all, then SIGKILL what is left."""
    for popen in running:
        signal_group(popen, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for popen in running:
        try:
            popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        signal_group(popen, signal.SIGKILL)
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class Supervisor:
    """Checks its children on each ``tick()``: exits, lost registrations, due restarts."""

    def __init__(
        self,
        children: list[Child],
        *,
        file_kv: Path | None = None,
        status_path: Path | None = None,
        log: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        restart: bool = True,
        lost_grace_s: float = 1.0,
    ) -> None:
        self.children = children
        self.file_kv = file_kv
        self.status_path = status_path
        self.log = log
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.restart = restart
        self.lost_grace_s = lost_grace_s
        # The latest failures, for the launcher's report; a crash loop keeps only the last.
        self.failures: deque[str] = deque(maxlen=MAX_FAILURES_KEPT)
        self.lock = threading.RLock()
        self._last_scan = -1e9

    # -- one pass -----------------------------------------------------------------------------
    def tick(self) -> None:
        with self.lock:
            now = self.clock()
            changed = False
            for child in self.children:
                changed |= self._check_exit(child, now)
            if self.file_kv is not None:
                changed |= self._check_registrations(now)
            for child in self.children:
                if child.restart_at is not None and now >= child.restart_at:
                    self._respawn(child, now)
                    changed = True
            if changed:
                self.write_status()

    def guarded_tick(self) -> None:
        """``tick()`` for a loop that must go on: a bad tick is logged, never raised."""
        try:
            self.tick()
        except Exception as exc:  # a bad tick must not end supervision for good
            self.log(f"supervisor: tick failed: {exc!r}")

    def _respawn(self, child: Child, now: float) -> None:
        """A restart that cannot start (fork refused, log unwritable) is one more failed run,
        backed off like any other: it must neither end supervision nor retry every tick."""
        try:
            child.spawn(now)
        except OSError as exc:
            child.popen, child.started_at = None, now
            self._ended(child, Exit(None, 0.0, f"restart failed: {exc}"), now)
            return
        self.log(f"supervisor: restarted {child.name} (pid {child.pid})")

    def _check_exit(self, child: Child, now: float) -> bool:
        if child.popen is None or child.restart_at is not None or child.down:
            return False
        code = child.popen.poll()
        if code is None:
            return False
        self._ended(child, Exit(code, now - child.started_at, "exited"), now)
        return True

    def _ended(self, child: Child, end: Exit, now: float) -> None:
        child.last_exit = end
        message = end.describe(child.name, child.pid)
        self.failures.append(message)
        if not self.restart:
            child.down = True
            self.log(f"supervisor: {message}; not restarted (supervision off)")
            return
        child.streak = 1 if end.runtime_s >= self.backoff.healthy_after_s else child.streak + 1
        delay = self.backoff.delay_s(child.streak)
        child.restarts += 1
        child.restart_at = now + delay
        self.log(f"supervisor: {message}; restart {child.restarts} in {delay:.1f} s")

    def _check_registrations(self, now: float) -> bool:
        assert self.file_kv is not None
        entries = registrations(self.file_kv)
        running = [
            c
            for c in self.children
            if c.registers and c.popen is not None and c.restart_at is None and not c.down
        ]
        owned = set().union(*(c.registered for c in running)) if running else set()
        unowned = {key: port for key, port in entries.items() if key not in owned and port >= 0}
        # Attributing a new entry reads /proc; at most once a second.
        if unowned and now - self._last_scan >= 1.0:
            self._last_scan = now
            for child in running:
                ports = group_listening_ports(child.pid)
                child.registered |= {key for key, port in unowned.items() if port in ports}
        changed = False
        for child in running:
            # Per entry: a process with hundreds of entries always has one being re-written,
            # and an entry counts as lost only while it stays missing for the grace period.
            missing = child.registered - entries.keys()
            child.missing_since = {k: child.missing_since.get(k, now) for k in missing}
            if not missing or now - min(child.missing_since.values()) < self.lost_grace_s:
                continue
            signal_group(child.popen, signal.SIGKILL)
            assert child.popen is not None
            try:
                child.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._ended(child, Exit(None, now - child.started_at, "lost registration"), now)
            changed = True
        return changed

    # -- reporting ----------------------------------------------------------------------------
    def status(self) -> dict:
        with self.lock:
            now = self.clock()
            return {
                "restarts_total": sum(c.restarts for c in self.children),
                "components": {
                    c.name: {
                        "pid": c.pid,
                        "state": _state(c),
                        "restarts": c.restarts,
                        "uptime_s": round(now - c.started_at, 1)
                        if _state(c) == "running"
                        else None,
                        "last_exit": None
                        if c.last_exit is None
                        else {
                            "code": c.last_exit.code,
                            "runtime_s": round(c.last_exit.runtime_s, 1),
                            "reason": c.last_exit.reason,
                        },
                    }
                    for c in self.children
                },
            }

    def write_status(self) -> None:
        if self.status_path is None:
            return
        tmp = self.status_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.status(), indent=1) + "\n")
            tmp.replace(self.status_path)
        except OSError as exc:  # a full disk must not stop supervising the stack
            self.log(f"supervisor: status file not written: {exc}")

    def restarts(self, name: str) -> int:
        return next(c.restarts for c in self.children if c.name == name)


def _state(child: Child) -> str:
    if child.restart_at is not None:
        return "backoff"
    if child.popen is None or child.down or child.popen.poll() is not None:
        return "exited"
    return "running"


class SupervisorThread:
    """Runs ``supervisor.tick()`` every ``interval_s`` until stopped (for in-process stacks)."""

    def __init__(self, supervisor: Supervisor, interval_s: float = 0.25) -> None:
        self.supervisor = supervisor
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="akr-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.supervisor.guarded_tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
