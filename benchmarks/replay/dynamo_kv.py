"""Dynamo 1.6.1's own routing policies, ported to the replay: round-robin and the KV router."""

from __future__ import annotations

import random

import numpy as np

from benchmarks.replay.cluster import ClusterView, SimRequest
from benchmarks.replay.records import RequestRecord


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


class KvPortPolicy:
    """Dynamo 1.6.1's KV router with its default ``KvRouterConfig``: per worker,
    ``max(0, (active prefill tokens + prompt) / block - overlap blocks) + active prompt blocks +
    this prompt's blocks not already active there``; the lowest cost wins, ties uniformly at
    random (seeded here; Dynamo's draw is unseeded). Load is tracked as Dynamo's router tracks
    it: prefill tokens from routing to the first token, blocks from routing to the finish."""

    name = "dynamo_kv"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._load: _ActiveLoad | None = None

    def costs(self, req: SimRequest, view: ClusterView) -> np.ndarray:
        """The per-worker cost Dynamo's default selector minimises."""
        if self._load is None:
            self._load = _ActiveLoad(view.num_workers)
        load = self._load
        bs = view.block_size
        overlap = view.overlap_blocks(req).astype(np.float64)
        raw_prefill_blocks = (load.prefill_tokens + req.trace.input_length) / float(bs)
        prefill = np.maximum(raw_prefill_blocks - overlap, 0.0)
        new_blocks = len(req.block_list) - load.present(req.block_list)
        return prefill + (load.active_blocks + new_blocks).astype(np.float64)

    def route(self, req: SimRequest, view: ClusterView) -> int:
        cost = self.costs(req, view)
        ties = np.flatnonzero(cost == cost.min())
        w = int(ties[0]) if len(ties) == 1 else int(ties[self._rng.randrange(len(ties))])
        assert self._load is not None
        cached = int(view.overlap_blocks(req)[w]) * view.block_size
        self._load.add(req.request_id, w, req.block_list, req.trace.input_length - cached)
        return w

    def on_first_token(self, req: SimRequest, worker: int, now_ms: float) -> None:
        if self._load is not None:
            self._load.prefill_done(req.request_id)

    def on_finish(self, req: SimRequest, worker: int, now_ms: float, rec: RequestRecord) -> None:
        if self._load is not None:
            self._load.free(req.request_id)
