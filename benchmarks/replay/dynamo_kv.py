"""Dynamo 1.6.1's own routing policies, ported to the replay: round-robin and the KV router."""

from __future__ import annotations

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
