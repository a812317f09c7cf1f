"""The launchers' supervisor on stand-in processes (small ``python -c`` programs, no Dynamo):
restarts with backoff, counting, the JSON status, and a lost discovery registration."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.registrations import group_listening_ports, registrations
from deploy.supervisor import Backoff, Child, Supervisor

LISTENER = """
import socket, sys, time
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen()
open(sys.argv[1], "w").write(str(sock.getsockname()[1]))
time.sleep(600)
"""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for child in made:
        if child.popen is not None and child.popen.poll() is None:
            child.popen.kill()
            child.popen.wait()


def child(tmp_path: Path, name: str, code: str, *args: str) -> Child:
    return Child(name, [sys.executable, "-c", code, *args], dict(os.environ), tmp_path / name)


def wait_exit(c: Child) -> None:
    assert c.popen is not None
    c.popen.wait(timeout=10)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    assert [backoff.delay_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_dead_child_is_restarted_after_backoff_and_counted(tmp_path, children) -> None:
    clock, lines = Clock(), []
    crash = child(tmp_path, "worker0", "raise SystemExit(3)")
    children.append(crash)
    status = tmp_path / "supervisor.json"
    sup = Supervisor(
        children, status_path=status, log=lines.append, clock=clock, backoff=Backoff(1.0, 8.0)
    )
    for delay in (1.0, 2.0, 4.0):
        crash.spawn(clock())
        first_pid = crash.pid
        wait_exit(crash)
        clock.now += 0.25
        sup.tick()
        assert crash.restart_at == clock.now + delay  # backoff grows while it keeps failing
        clock.now += delay - 0.01
        sup.tick()
        assert crash.pid == first_pid  # not yet
        clock.now += 0.01
        sup.tick()
        assert crash.pid != first_pid
        crash.popen.wait(timeout=10)  # type: ignore[union-attr]
        crash.restart_at, crash.popen = None, None  # next round spawns it by hand
    assert sup.restarts("worker0") == 3
    report = json.loads(status.read_text())["components"]["worker0"]
    assert report["restarts"] == 3
    assert report["last_exit"] == {"code": 3, "runtime_s": 0.2, "reason": "exited"}
    assert (
        "worker0 (pid " in lines[0] and "exited with 3 after 0.2 s; restart 1 in 1.0 s" in lines[0]
    )


def test_a_long_healthy_run_resets_the_backoff(tmp_path, children) -> None:
    clock = Clock()
    crash = child(tmp_path, "processor", "raise SystemExit(1)")
    children.append(crash)
    sup = Supervisor(children, log=lambda _: None, clock=clock, backoff=Backoff(1.0, 30.0, 60.0))
    crash.streak = 4  # four quick failures before
    crash.spawn(clock())
    wait_exit(crash)
    clock.now += 61.0
    sup.tick()
    assert crash.restart_at == clock.now + 1.0


def test_unsupervised_death_is_reported_with_code_and_runtime(tmp_path, children) -> None:
    clock, lines = Clock(), []
    dead = child(tmp_path, "processor", "raise SystemExit(7)")
    children.append(dead)
    sup = Supervisor(children, log=lines.append, clock=clock, restart=False)
    dead.spawn(clock())
    wait_exit(dead)
    clock.now += 42.0
    sup.tick()
    sup.tick()
    assert dead.restart_at is None and dead.restarts == 0
    assert list(sup.failures) == [f"processor (pid {dead.pid}) exited with 7 after 42.0 s"]
    assert lines == [f"supervisor: {sup.failures[0]}; not restarted (supervision off)"]
    assert sup.status()["components"]["processor"]["state"] == "exited"


def test_a_restart_that_cannot_start_is_backed_off_not_fatal(tmp_path, children) -> None:
    """A spawn refused by the OS (here: the program is gone) is a failed run with backoff."""
    clock, lines = Clock(), []
    crash = child(tmp_path, "worker0", "raise SystemExit(3)")
    children.append(crash)
    sup = Supervisor(children, log=lines.append, clock=clock, backoff=Backoff(1.0, 8.0))
    crash.spawn(clock())
    wait_exit(crash)
    sup.tick()
    crash.argv = [str(tmp_path / "no-such-program")]
    clock.now += 1.0
    sup.tick()  # raised FileNotFoundError out of tick before
    assert crash.popen is None and crash.restarts == 2
    assert crash.restart_at == clock.now + 2.0
    assert "worker0 could not be started: restart failed: " in lines[-1]
    assert sup.status()["components"]["worker0"]["state"] == "backoff"
    sup.tick()  # not retried before its backoff
    assert crash.restarts == 2
    crash.argv = [sys.executable, "-c", "import time; time.sleep(600)"]
    clock.now += 2.0
    sup.tick()
    assert crash.popen is not None and crash.popen.poll() is None
    assert lines[-1] == f"supervisor: restarted worker0 (pid {crash.pid})"


def test_a_crash_loop_keeps_only_the_latest_failures(tmp_path, children) -> None:
    from deploy.supervisor import MAX_FAILURES_KEPT

    clock = Clock()
    crash = child(tmp_path, "worker0", "raise SystemExit(3)")
    children.append(crash)
    sup = Supervisor(children, log=lambda _: None, clock=clock, backoff=Backoff(0.0, 0.0))
    crash.argv = [str(tmp_path / "no-such-program")]
    crash.restart_at = clock.now
    for _ in range(MAX_FAILURES_KEPT + 5):
        sup.tick()
    assert crash.restarts == MAX_FAILURES_KEPT + 5
    assert len(sup.failures) == MAX_FAILURES_KEPT


def test_signal_deaths_name_the_signal(tmp_path, children) -> None:
    clock, lines = Clock(), []
    victim = child(tmp_path, "worker1", "import time; time.sleep(600)")
    children.append(victim)
    sup = Supervisor(children, log=lines.append, clock=clock)
    victim.spawn(clock())
    victim.popen.kill()  # type: ignore[union-attr]
    wait_exit(victim)
    sup.tick()
    assert "exited with -9 (SIGKILL) after 0.0 s; restart 1 in 0.5 s" in lines[0]


def _port(tmp_path: Path) -> int:
    """The port the LISTENER child wrote, once it is listening."""
    port_file = tmp_path / "port"
    deadline = time.monotonic() + 10
    while not (port_file.exists() and port_file.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return int(port_file.read_text())


def _register(file_kv: Path, name: str, port: int) -> Path:
    directory = file_kv / "v1" / "instances"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    transport = {"tcp": f"127.0.0.1:{port}/{name}/workers/backend/generate"}
    path.write_text(json.dumps({"type": "Endpoint", "transport": transport}))
    return path


def test_registrations_belong_to_the_process_listening_on_their_port(tmp_path, children) -> None:
    listener = child(tmp_path, "worker0", LISTENER, str(tmp_path / "port"))
    children.append(listener)
    listener.spawn(0.0)
    port = _port(tmp_path)
    _register(tmp_path / "kv", "workers%2Fbackend%2Fgenerate%2Fabc", port)
    channel = tmp_path / "kv" / "v1" / "event_channels" / "kv-events"
    channel.parent.mkdir(parents=True)
    channel.write_text(
        json.dumps({"transport": {"config": {"endpoint": f"tcp://127.0.0.1:{port}"}}})
    )
    assert registrations(tmp_path / "kv") == {
        "instances/workers%2Fbackend%2Fgenerate%2Fabc": port,
        "event_channels/kv-events": port,
    }
    assert port in group_listening_ports(listener.pid)
    assert port not in group_listening_ports(os.getpgid(0))


def test_alive_child_that_lost_its_registration_is_killed_and_restarted(tmp_path, children) -> None:
    clock, lines = Clock(), []
    worker = child(tmp_path, "worker0", LISTENER, str(tmp_path / "port"))
    gateway = child(tmp_path, "gateway", "import time; time.sleep(600)")
    gateway.registers = False
    children.extend([worker, gateway])
    sup = Supervisor(children, file_kv=tmp_path / "kv", log=lines.append, clock=clock)
    worker.spawn(clock())
    gateway.spawn(clock())
    entry = _register(tmp_path / "kv", "workers%2Fbackend%2Fgenerate%2Fabc", _port(tmp_path))
    sup.tick()
    assert worker.registered == {f"instances/{entry.name}"}
    assert gateway.registered == set()

    entry.unlink()  # the lease expired (a frozen process) and someone removed the entry
    first_pid = worker.pid
    sup.tick()
    assert worker.popen.poll() is None  # type: ignore[union-attr]  # within the grace
    clock.now += 1.0
    sup.tick()
    assert worker.popen.poll() is not None  # type: ignore[union-attr]
    assert worker.last_exit is not None and worker.last_exit.reason == "lost registration"
    assert gateway.popen.poll() is None  # type: ignore[union-attr]
    clock.now += 0.5
    sup.tick()
    assert worker.pid != first_pid and worker.restarts == 1
    assert "lost its discovery registration while alive after 1.0 s; killed; restart 1" in lines[0]


def test_entries_rewritten_in_turn_are_not_a_lost_registration(tmp_path, children) -> None:
    """A worker with many entries (a mocker serving 256 instances) always has one being
    re-written: on every tick another entry is torn or briefly absent, none for long. That is
    not a lost registration (the launcher killed such a worker every few seconds); an entry
    that stays missing past the grace still is."""
    clock = Clock()
    worker = child(tmp_path, "worker0", LISTENER, str(tmp_path / "port"))
    children.append(worker)
    sup = Supervisor(children, file_kv=tmp_path / "kv", log=lambda _: None, clock=clock)
    worker.spawn(clock())
    port = _port(tmp_path)
    entries = [
        _register(tmp_path / "kv", f"workers%2Fbackend%2Fgenerate%2F{i}", port) for i in range(2)
    ]
    sup.tick()
    assert worker.registered == {f"instances/{e.name}" for e in entries}
    assert registrations(tmp_path / "kv") == {f"instances/{e.name}": port for e in entries}
    texts = [e.read_text() for e in entries]
    for k in range(8):  # 4 s of ticks, 0.5 s apart; a different entry each tick
        torn, other = entries[k % 2], entries[(k + 1) % 2]
        other.write_text(texts[(k + 1) % 2])
        if k % 4 < 2:
            torn.write_text(texts[k % 2][:20])  # half written
            assert registrations(tmp_path / "kv")[f"instances/{torn.name}"] == -1
        else:
            torn.unlink()  # removed and not yet re-created
        sup.tick()
        clock.now += 0.5
    assert worker.popen.poll() is None  # type: ignore[union-attr]
    entries[0].unlink()  # now one stays gone
    entries[1].write_text(texts[1])
    sup.tick()
    clock.now += 1.0
    sup.tick()
    assert worker.last_exit is not None and worker.last_exit.reason == "lost registration"


def test_free_ports_avoid_the_ephemeral_range_and_each_other() -> None:
    """A stack's listening ports come from below the range outgoing connections take their
    source ports from (which once took a gateway's port between pick and bind), and one
    launcher never hands out the same port twice."""
    from deploy.local_stack import LISTEN_PORTS_FROM, _ephemeral_start, free_port

    low = _ephemeral_start()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    if low - LISTEN_PORTS_FROM >= 1000:
        assert all(LISTEN_PORTS_FROM <= p < low for p in ports)


def test_an_unwritable_status_file_does_not_stop_supervision(tmp_path, children) -> None:
    clock, lines = Clock(), []
    crash = child(tmp_path, "worker0", "raise SystemExit(3)")
    children.append(crash)
    status = tmp_path / "gone" / "supervisor.json"  # its directory does not exist
    sup = Supervisor(children, status_path=status, log=lines.append, clock=clock)
    crash.spawn(clock())
    wait_exit(crash)
    sup.tick()  # raised FileNotFoundError out of tick before
    assert crash.restarts == 1
    assert any("status file not written" in line for line in lines)


def test_a_failing_tick_is_logged_by_the_launchers_loop(tmp_path, children, monkeypatch) -> None:
    """Both launchers call guarded_tick: an unreadable discovery directory must not end them."""
    import deploy.supervisor as supervisor_module

    def unreadable(file_kv: Path) -> dict[str, int]:
        raise PermissionError(13, "Permission denied", str(file_kv))

    monkeypatch.setattr(supervisor_module, "registrations", unreadable)
    lines: list[str] = []
    sup = Supervisor(children, file_kv=tmp_path, log=lines.append, clock=Clock())
    sup.guarded_tick()
    assert lines and lines[0].startswith("supervisor: tick failed: PermissionError")
