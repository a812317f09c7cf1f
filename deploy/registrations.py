"""Which process owns which discovery registration, read from Dynamo's file discovery.

With ``DYN_DISCOVERY_BACKEND=file`` every served endpoint instance is one file under
``$DYN_FILE_KV/v1/instances/``; its owner re-touches it every few seconds and any process of
the stack removes it once it is about 10 s old (the lease). The file names the instance's TCP
request-plane address (``"transport": {"tcp": "127.0.0.1:PORT/..."}``), so the process that
listens on that port owns it: found through ``/proc`` (Linux), no log scraping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def registrations(file_kv: Path) -> dict[str, int]:
    """Instance file name -> request-plane port, for every instance registered now."""
    out: dict[str, int] = {}
    directory = file_kv / "v1" / "instances"
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return out
    for name in names:
        try:
            data = json.loads((directory / name).read_text())
            address = data["transport"]["tcp"].split("/", 1)[0]
            out[name] = int(address.rsplit(":", 1)[1])
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            continue  # being written or removed right now, or not a TCP instance
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
