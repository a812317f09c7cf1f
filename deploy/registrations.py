"""Which process owns which discovery registration, read from Dynamo's file discovery.

With ``DYN_DISCOVERY_BACKEND=file`` each registration is one file under ``$DYN_FILE_KV/v1/``:
served endpoint instances (``instances/``), event-plane publishers (``event_channels/``: KV
events, load metrics) and KV-event sources (``event_sources/``). Its owner re-touches it every
few seconds, and any process of the stack removes it once it is about 10 s old (the lease). A
process frozen past that loses some or all of its entries for good: without ``instances/`` it
gets no requests, without ``event_channels/`` nobody hears its KV events. Each file names a TCP
address the owner listens on (request plane, or ZMQ publisher), so the process listening on
that port owns it: found through ``/proc`` (Linux), no log scraping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

KINDS = ("instances", "event_channels", "event_sources")


def _port(kind: str, data: dict[str, Any]) -> int:
    if kind == "instances":
        address = data["transport"]["tcp"].split("/", 1)[0]  # 127.0.0.1:PORT/<id>/<path>
    elif kind == "event_channels":
        address = data["transport"]["config"]["endpoint"]  # tcp://127.0.0.1:PORT
    else:
        address = data["metadata"]["recovery_target"]["transport"]["tcp"].split("/", 1)[0]
    return int(address.rsplit(":", 1)[1])


def registrations(file_kv: Path) -> dict[str, int]:
    """``<kind>/<file name>`` -> the TCP port its owner listens on, for every entry now; -1
    for a file that exists but does not parse (being re-written): present, owner unknown."""
    out: dict[str, int] = {}
    for kind in KINDS:
        directory = file_kv / "v1" / kind
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            try:
                out[f"{kind}/{name}"] = _port(kind, json.loads((directory / name).read_text()))
            except OSError:
                continue  # removed since the listing
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                out[f"{kind}/{name}"] = -1  # being written right now, or not over TCP
    return out


def group_pids(pgid: int) -> list[int]:
    """Every process in process group ``pgid`` (each child runs in a group of its own)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening_ports(pids: list[int]) -> set[int]:
    """TCP ports (v4 and v6) on which any of ``pids`` listens."""
    inodes = set().union(*(_socket_inodes(pid) for pid in pids)) if pids else set()
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[9]) in inodes:  # 0A: LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def group_listening_ports(pgid: int) -> set[int]:
    return listening_ports(group_pids(pgid))
