"""Routing as three calls: ``find_worker``, ``first_token``, ``finish``.

``RouterService`` owns everything one routing domain shares: the ``Router`` (score, learner,
prefix table) and the ``LoadTracker`` of the requests it placed. The processor calls it
in-process by default; ``python -m router`` serves the same object as Dynamo endpoints so
several processors share one learner and one view of the load (``router/__main__.py``).

What crosses the wire per request is O(workers) numbers, never the prompt: the caller asks its
own ``KvRouter`` (fed by the workers' KV events) for ``get_potential_loads`` and passes the
rows (``worker_id``, ``potential_prefill_tokens``, ``potential_decode_blocks``), which with no
load of ours tracked there are exactly this prompt's uncached tokens and own blocks per worker
(see router/kv_signals.py). The request also carries one hash per prompt block (router/load.py
counts distinct blocks in flight with them); a list longer than the prompt's blocks is refused,
naming ``request.block_hashes``.

Block size: the workers' KV block size, which the processor reads from their model cards.
An in-process service is built with it; a standalone router takes it from the first
``find_worker`` message and refuses any message that names another one, so a processor and a
router that disagree fail loudly instead of counting blocks of different sizes.

Learner state survives restarts: ``save_state`` writes the bandit's posterior as JSON from a
worker thread, ``load_state`` reads it from one at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from router.config import RouterConfig
from router.kv_signals import signals_from_rows
from router.load import LoadTracker, request_blocks
from router.policy import Decision, Router, RouteRequest

DEFAULT_BLOCK_SIZE = 64
logger = logging.getLogger(__name__)
STATE_SAVE_INTERVAL_S = 60.0  # period of the learner-state snapshots
DEPARTED_AFTER_S = 600.0  # a worker in no caller's rows this long has left the fleet


class BlockSizeMismatch(ValueError):
    """A caller's KV block size differs from the one this router counts in."""


class InvalidRequest(ValueError):
    """A caller's ``find_worker`` message the router cannot account for; names the field."""


class FindWorker(msgspec.Struct, kw_only=True):
    """Request of ``find_worker``: the route request and the caller's KvRouter rows."""

    request: RouteRequest
    rows: list[dict[str, Any]]
    live: list[int] | None = None  # workers the caller can reach; None = all in rows
    # KV blocks per worker from their model cards (processor/engine_state.py); None = not read.
    capacity: dict[int, int] | None = None
    block_size: int | None = None  # the caller's KV block size; None = the router's own


class Feedback(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``first_token`` (event="first_token") or the end of a request (event="finish")."""

    # Literal: an endpoint refuses any other event (one was taken for "finish": it ended the
    # request's load and decision, counted as an unmeasured answer).
    event: Literal["first_token", "finish"]
    request_id: str
    ttft_ms: float | None = None
    itl_ms: float | None = None
    uncached_tokens: int | None = None
    output_tokens: int = 0
    ok: bool = True
    cancelled: bool = False


class Departures:
    """Workers that left the fleet, for a router no caller tells of departures
    (``python -m router``): one absent from the callers' rows for ``DEPARTED_AFTER_S`` is
    forgotten, so the learner, its snapshots and metrics do not grow with every instance id
    a restarting fleet ever had. Sampled once per sweep from the latest ``find_worker`` (O(1)
    on the request path); a sweep with no decision since the last one ages nothing."""

    def __init__(self) -> None:
        self.fleet: np.ndarray | None = None  # worker ids of the latest find_worker
        self._seen: dict[int, float] = {}  # worker id -> last sweep it was in the fleet

    def gone(self, known: list[int], now: float) -> list[int]:
        """Workers (of the fleet seen, or ``known`` to the learner) absent too long."""
        fleet, self.fleet = self.fleet, None
        if fleet is None:
            return []
        seen = self._seen
        for w in known:  # e.g. restored from a state file: its clock starts now
            seen.setdefault(w, now)
        for w in fleet.tolist():
            seen[w] = now
        horizon = now - DEPARTED_AFTER_S
        gone = [w for w, t in seen.items() if t < horizon]
        for w in gone:
            del seen[w]
        return gone


class RouterService:
    """Router + load accounting behind the three calls of a request's life."""

    def __init__(
        self, config: RouterConfig | None = None, block_size: int | None = DEFAULT_BLOCK_SIZE
    ) -> None:
        """``block_size`` None: taken from the first ``find_worker`` message (standalone)."""
        self.config = config or RouterConfig()
        self.block_size = block_size
        self.router = Router(self.config, block_size or DEFAULT_BLOCK_SIZE)
        self.load = LoadTracker(block_size or DEFAULT_BLOCK_SIZE)
        self.departures = Departures()

    def use_block_size(self, block_size: int | None) -> None:
        """Count in ``block_size`` (the first caller's, when the service was built without
        one); ``BlockSizeMismatch`` when it differs from the size already in use."""
        if block_size is None or block_size == self.block_size:
            return
        if block_size < 1:  # adopted, it would divide by zero and refuse every right caller
            raise ValueError(f"a caller names a KV block size of {block_size} tokens")
        if self.block_size is None:  # the first caller names it
            self.block_size = self.router.block_size = self.load.block_size = block_size
            return
        raise BlockSizeMismatch(
            f"a caller counts KV blocks of {block_size} tokens, this router {self.block_size}: "
            "every processor must see the same workers' block size (their model cards)"
        )

    def find_worker(self, msg: FindWorker, now: float) -> Decision:
        """Decide and start accounting the request's load on the chosen worker."""
        self.use_block_size(msg.block_size)
        req, cfg = msg.request, self.config
        check_block_hashes(req, self.block_size or DEFAULT_BLOCK_SIZE)
        live = None if msg.live is None else frozenset(msg.live)
        signals, uncached = signals_from_rows(
            msg.rows,
            req.prompt_tokens,
            self.load,
            cfg.worker_capacity_blocks,
            live,
            msg.capacity,
            req.block_hashes,
        )
        decision = self.router.decide(req, signals, now)
        self.departures.fleet = signals.worker_ids
        if decision.reason == "held":
            return decision
        wid = decision.worker_id
        self.load.start(
            decision.request_id,
            wid,
            uncached.get(wid, req.prompt_tokens),
            req.prompt_tokens,
            req.osl or self.config.default_osl,
            tuple(req.block_hashes) if req.block_hashes else (),
            now=now,
        )
        return decision

    def feedback(self, msg: Feedback) -> None:
        if msg.event == "first_token":
            self.load.first_token(msg.request_id)
            self.router.first_token(msg.request_id)
            return
        # How long it decoded (after its first token), for the load's KV hold time.
        measured = msg.ok and not msg.cancelled and msg.itl_ms and msg.output_tokens > 1
        self.load.finish(msg.request_id, msg.itl_ms * (msg.output_tokens - 1) if measured else None)
        if msg.cancelled:
            self.router.cancel(msg.request_id)
        else:
            self.router.report(
                msg.request_id,
                msg.ttft_ms,
                msg.itl_ms,
                uncached_tokens=msg.uncached_tokens,
                output_tokens=msg.output_tokens,
                ok=msg.ok,
            )

    def remove_worker(self, worker_id: int) -> None:
        self.router.remove_worker(worker_id)

    def sweep(self, now: float) -> dict[str, int]:
        """Background maintenance: router expiry and feedback timeouts, the load of
        requests whose end never arrived (same horizon as the feedback timeout), and the
        workers that left the fleet."""
        swept = self.router.sweep(now)
        swept["load_expired"] = self.load.expire(now - self.config.feedback_timeout_s)
        gone = self.departures.gone(self.router.bandit.workers, now)
        for worker_id in gone:
            self.remove_worker(worker_id)
        swept["workers_forgotten"] = len(gone)
        return swept

    # -- learner state ------------------------------------------------------------------------
    def state_bytes(self) -> bytes:
        """The learner's posterior as JSON (taken on the loop, so it is consistent)."""
        return json.dumps(self.router.state_dict()).encode()

    async def load_state(self, path: Path) -> bool:
        """Restore the learner from a state file; False when there is none or it is not usable.

        The file is read in a thread: start-up runs on the event loop, which must not wait on a
        disk. A file of another version or a damaged one is a cache, not a reason to stay down:
        it is logged, the learner starts from the prior, and the next save replaces the file."""
        data = await asyncio.to_thread(read_if_exists, path)
        if data is None:
            return False
        try:
            self.router.load_state_dict(json.loads(data))
        except ValueError as exc:  # another version, damaged JSON or damaged content
            logger.warning("learner state %s not usable (%s); starting from the prior", path, exc)
            return False
        return True

    async def save_state(self, path: Path) -> None:
        """Snapshot on the loop, write in a thread: no blocking file I/O on the event loop."""
        await asyncio.to_thread(write_atomic, path, self.state_bytes())


def check_block_hashes(req: RouteRequest, block_size: int) -> None:
    """``InvalidRequest`` when ``block_hashes`` has more entries than the prompt has blocks
    (the partial last one included). Why: the load account keeps every hash of a request in
    flight and scans them per decision, so a longer list is a caller's bug (another block
    size, unchained hashes) or a way to hold memory and loop time the prompt does not need.
    The processor sends full blocks only, so its own lists always pass."""
    hashes = req.block_hashes
    if hashes is None:
        return
    blocks = max(0, request_blocks(req.prompt_tokens, 0, block_size))
    if len(hashes) > blocks:
        raise InvalidRequest(
            f"request.block_hashes: {len(hashes)} hashes for a prompt of {req.prompt_tokens} "
            f"tokens, which has at most {blocks} blocks of {block_size} tokens"
        )


def read_if_exists(path: Path) -> bytes | None:
    """The file's bytes, or None when there is no file (blocking: call it from a thread)."""
    if not path.exists():
        return None
    return path.read_bytes()


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a state file. The
    temporary file is one of its own: the shutdown save can overlap a periodic save still in
    its thread, and with one shared name each overwrote the other's file mid-way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
