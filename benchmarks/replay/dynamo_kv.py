"""Dynamo 1.6.1's own routing policies, ported to the replay: round-robin and the KV router."""

from __future__ import annotations

import random
from collections import deque

import numpy as np
from pydantic import BaseModel, Field

from benchmarks.replay.cluster import QUEUED, ClusterView, SimRequest
from benchmarks.replay.records import RequestRecord
from router.tunable import tunable


class RoundRobinPolicy:
    """Workers in turn, in arrival order (Dynamo's ``round_robin`` router mode)."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def route(self, req: SimRequest, view: ClusterView) -> int:
        w = self._next % view.num_workers
        self._next += 1
        return w

    def on_first_token(self, req: SimRequest, worker: int, now_ms: float) -> None:
        return None

    def on_finish(self, req: SimRequest, worker: int, now_ms: float, rec: RequestRecord) -> None:
        return None


class _ActiveLoad:
    """Dynamo's router-side load accounting (``ActiveSequences`` per worker): prompt tokens still
    to prefill, and the distinct prompt blocks of the requests in flight."""

    def __init__(self, num_workers: int) -> None:
        if num_workers > 64:
            raise ValueError("the KV port tracks at most 64 workers (one bit each)")
        self.n = num_workers
        self.prefill_tokens = np.zeros(num_workers, dtype=np.int64)
        self.active_blocks = np.zeros(num_workers, dtype=np.int64)
        self._counts: list[dict[int, int]] = [{} for _ in range(num_workers)]
        self._masks: dict[int, int] = {}
        self._prefill: dict[str, tuple[int, int]] = {}
        self._blocks: dict[str, tuple[int, list[int]]] = {}
        self._shifts = np.arange(num_workers, dtype=np.uint64)

    def present(self, blocks: list[int]) -> np.ndarray:
        """How many of ``blocks`` each worker's in-flight requests already hold."""
        if not blocks:
            return np.zeros(self.n, dtype=np.int64)
        masks = self._masks
        m = np.fromiter((masks.get(h, 0) for h in blocks), np.uint64, len(blocks))
        return ((m[:, None] >> self._shifts) & np.uint64(1)).sum(axis=0).astype(np.int64)

    def add(self, req_id: str, worker: int, blocks: list[int], prefill_tokens: int) -> None:
        if prefill_tokens > 0:
            self._prefill[req_id] = (worker, prefill_tokens)
            self.prefill_tokens[worker] += prefill_tokens
        counts = self._counts[worker]
        masks = self._masks
        bit = 1 << worker
        for h in blocks:
            c = counts.get(h, 0)
            if c == 0:
                masks[h] = masks.get(h, 0) | bit
            counts[h] = c + 1
        self.active_blocks[worker] = len(counts)
        self._blocks[req_id] = (worker, blocks)

    def prefill_done(self, req_id: str) -> None:
        got = self._prefill.pop(req_id, None)
        if got is not None:
            self.prefill_tokens[got[0]] -= got[1]

    def free(self, req_id: str) -> None:
        self.prefill_done(req_id)
        got = self._blocks.pop(req_id, None)
        if got is None:
            return
        worker, blocks = got
        counts = self._counts[worker]
        masks = self._masks
        keep = ~(1 << worker)
        for h in blocks:
            c = counts[h] - 1
            if c:
                counts[h] = c
            else:
                del counts[h]
                m = masks[h] & keep
                if m:
                    masks[h] = m
                else:
                    del masks[h]
        self.active_blocks[worker] = len(counts)


class KvKnobs(BaseModel):
    """The ``KvRouterConfig`` knobs of Dynamo 1.6.1 the port implements, under Dynamo's names
    and defaults, with the ranges ``python -m benchmarks.tune`` searches (router/tunable.py)."""

    overlap_score_credit: float = Field(
        1.0,
        ge=0,
        json_schema_extra=tunable(0.0, 3.0),
        description="Blocks of prefill credited per cached prompt block (the cost's prefill "
        "term is clamped at zero).",
    )
    prefill_load_scale: float = Field(
        1.0,
        gt=0,
        json_schema_extra=tunable(0.1, 50.0, log=True),
        description="Weight of the prefill term against the decode blocks.",
    )
    router_temperature: float = Field(
        0.0,
        ge=0,
        json_schema_extra=tunable(0.0, 1.0),
        description="0: the lowest cost wins; above: softmax sampling over the costs, "
        "normalised to their spread.",
    )
    router_queue_threshold: float | None = Field(
        None,
        ge=0,
        json_schema_extra=tunable(0.0, 4.0, optional=True),
        description="Hold requests in the router while every worker's tracked prefill tokens "
        "exceed this fraction of max_num_batched_tokens; unset = never.",
    )


class KvPortPolicy:
    """Dynamo 1.6.1's KV router (``DefaultWorkerSelector`` and the scheduler queue of
    lib/llm/src/kv_router in ai-dynamo/dynamo). Per worker the cost is
    ``prefill_load_scale * max(0, (active prefill tokens + prompt) / block -
    overlap_score_credit * overlap blocks) + active prompt blocks + this prompt's blocks not
    already active there``. Temperature 0: the lowest cost wins, ties uniformly at random
    (seeded here; Dynamo's draw is unseeded). Above 0: Dynamo's ``softmax_sample``, i.e.
    probabilities ``exp(-(cost - min) / ((max - min) * temperature))``, uniform when all costs
    are equal. With ``router_queue_threshold``, a request that arrives while every worker holds
    more than ``threshold * max_num_batched_tokens`` tracked prefill tokens waits in a FCFS
    queue; after each engine update the queue is drained while some worker is below that,
    each request routed on the state of that moment. Load is tracked as Dynamo's router tracks
    it: prefill tokens from routing to the first token, blocks from routing to the finish.
    With default ``KvKnobs`` this is the configuration checked against Dynamo's replay
    (benchmarks/results/replay/fidelity.md)."""

    name = "dynamo_kv"

    def __init__(self, seed: int = 0, knobs: KvKnobs | None = None) -> None:
        self._rng = random.Random(seed)
        self._load: _ActiveLoad | None = None
        self.knobs = knobs or KvKnobs()
        self._queue: deque[SimRequest] = deque()

    def _tracker(self, view: ClusterView) -> _ActiveLoad:
        if self._load is None:
            self._load = _ActiveLoad(view.num_workers)
        return self._load

    def costs(self, req: SimRequest, view: ClusterView) -> np.ndarray:
        """The per-worker cost Dynamo's default selector minimises."""
        load = self._tracker(view)
        bs = view.block_size
        k = self.knobs
        overlap = view.overlap_blocks(req).astype(np.float64)
        raw_prefill_blocks = (load.prefill_tokens + req.trace.input_length) / float(bs)
        prefill = np.maximum(raw_prefill_blocks - k.overlap_score_credit * overlap, 0.0)
        if k.prefill_load_scale != 1.0:
            prefill = k.prefill_load_scale * prefill
        new_blocks = len(req.block_list) - load.present(req.block_list)
        return prefill + (load.active_blocks + new_blocks).astype(np.float64)

    def _pick(self, cost: np.ndarray) -> int:
        t = self.knobs.router_temperature
        if t > 0.0:
            lo, hi = float(cost.min()), float(cost.max())
            if hi == lo:
                p = np.full(len(cost), 1.0 / len(cost))
            else:
                p = np.exp(-(cost - lo) / ((hi - lo) * t))
                p /= p.sum()
            u = self._rng.random()
            return min(int(np.searchsorted(np.cumsum(p), u)), len(cost) - 1)
        ties = np.flatnonzero(cost == cost.min())
        return int(ties[0]) if len(ties) == 1 else int(ties[self._rng.randrange(len(ties))])

    def _all_busy(self, view: ClusterView) -> bool:
        limit = self.knobs.router_queue_threshold
        if limit is None:
            return False
        tokens = self._tracker(view).prefill_tokens
        return bool((tokens > limit * view.cluster.max_num_batched_tokens).all())

    def route(self, req: SimRequest, view: ClusterView) -> int:
        if self._queue or self._all_busy(view):
            self._queue.append(req)
            return QUEUED
        return self._route_now(req, view)

    def _route_now(self, req: SimRequest, view: ClusterView) -> int:
        w = self._pick(self.costs(req, view))
        self._admit(req, view, w)
        return w

    def release(self, view: ClusterView) -> list[tuple[SimRequest, int]]:
        """Queued requests that may go now, each routed on the state of this moment."""
        out: list[tuple[SimRequest, int]] = []
        while self._queue and not self._all_busy(view):
            req = self._queue.popleft()
            out.append((req, self._route_now(req, view)))
        return out

    def _admit(self, req: SimRequest, view: ClusterView, w: int) -> None:
        """Start tracking ``req``'s load on ``w`` as Dynamo's router does once it routes."""
        cached = int(view.overlap_blocks(req)[w]) * view.block_size
        load = self._tracker(view)
        load.add(req.request_id, w, req.block_list, req.trace.input_length - cached)

    def on_first_token(self, req: SimRequest, worker: int, now_ms: float) -> None:
        if self._load is not None:
            self._load.prefill_done(req.request_id)

    def on_finish(self, req: SimRequest, worker: int, now_ms: float, rec: RequestRecord) -> None:
        if self._load is not None:
            self._load.free(req.request_id)


def session_key(req: SimRequest) -> str | None:
    """The conversation a request belongs to: its session id, else the client's prefix id."""
    if req.trace.session_id:
        return req.trace.session_id
    hints = req.trace.hints
    return hints.prefix_id if hints is not None and hints.prefix_id else None


class KvAffinityPolicy(KvPortPolicy):
    """The KV router with session affinity as later Dynamo versions bind it (modelled; 1.6.1's
    replay cannot express it): a session's first request, or its first after the binding
    expired, goes where the KV router sends it and binds the session to that worker; later
    requests of the session go there while one is in flight or within ``ttl_s`` of the last one
    finishing. Requests without a session or prefix id route as plain KV."""

    name = "dynamo_kv_affinity"

    def __init__(self, seed: int = 0, ttl_s: float = 60.0) -> None:
        super().__init__(seed)  # default knobs: no router queue, so ``route`` never holds
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.ttl_ms = ttl_s * 1000.0
        self._bound: dict[str, list[float]] = {}  # key -> [worker, in flight, idle deadline]
        self._key_of: dict[str, str] = {}  # request id -> session key

    def route(self, req: SimRequest, view: ClusterView) -> int:
        key = session_key(req)
        if key is None:
            return super().route(req, view)
        b = self._bound.get(key)
        if b is not None and (b[1] > 0 or view.now_ms < b[2]):
            w = int(b[0])
            self._admit(req, view, w)
            b[1] += 1
        else:
            w = super().route(req, view)
            self._bound[key] = [w, 1, 0.0]
        self._key_of[req.request_id] = key
        return w

    def on_finish(self, req: SimRequest, worker: int, now_ms: float, rec: RequestRecord) -> None:
        super().on_finish(req, worker, now_ms, rec)
        key = self._key_of.pop(req.request_id, None)
        if key is None:
            return
        b = self._bound[key]
        b[1] -= 1
        if b[1] == 0:
            b[2] = now_ms + self.ttl_ms
