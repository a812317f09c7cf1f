"""Our router as a replay policy: the processor's own objects on the replay's virtual clock.

The decision path is the processor's (processor/routing.py): the hints become a
``RouteRequest`` through ``route_request``, Dynamo's ``get_potential_loads`` rows are rebuilt
from the simulated KV-event index exactly as a KvRouter that tracks none of our load returns
them (this prompt's uncached tokens and own blocks per worker), ``find_worker_message`` adds
the capacity the engines' cards state, and ``RouterService`` decides, accounts load and
learns from the simulated TTFT/ITL (timed from the placement, as the processor times an
attempt: a wait in the admission queue is not the worker's). Admission is the processor's too
(router/admission.py with the processor's deadline): a held request waits in the policy's
queue and is placed or refused by ``release``. Only the clock differs: virtual seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.replay.cluster import REFUSED, ClusterConfig, ClusterView, SimRequest
from benchmarks.replay.records import RequestRecord
from processor.config import ProcessorConfig
from processor.routing import find_worker_message, finish_feedback, route_request
from router.admission import AdmissionQueue
from router.config import RouterConfig
from router.hints import AgentHints
from router.service import Feedback, RouterService

# Worker ids as the processor sees them: Dynamo instance ids (uint64). Offset so that an id is
# never confused with a worker index.
_ID_BASE = 0x1000


def router_config(cluster: ClusterConfig, seed: int) -> RouterConfig:
    """Our router as an operator deploys it: defaults, a fixed seed, and the prefill time per
    token calibrated to the engine (the setting's own instruction): the default is the
    mocker's at speed 1, so a cluster ``s`` times as fast takes the default over ``s``. Block
    size and capacity come with each request, as the processor reads them from model cards."""
    speed = float(np.mean([cluster.worker_speed(w) for w in range(cluster.num_workers)]))
    default = RouterConfig.model_fields["prefill_ms_per_token"].default
    return RouterConfig(seed=seed, prefill_ms_per_token=default / speed)


class EngineReport:
    """What the processor's EngineState holds: KV capacity per worker, from the model cards."""

    def __init__(self) -> None:
        self.capacity: dict[int, int] = {}


NO_HINTS = AgentHints()


def potential_load_rows(
    ids: list[int], overlap_blocks: np.ndarray, prompt_tokens: int, block_size: int
) -> list[dict[str, Any]]:
    """``KvRouter.get_potential_loads`` for one prompt when it tracks none of our requests."""
    own_blocks = prompt_tokens // block_size
    uncached = np.maximum(prompt_tokens - overlap_blocks.astype(np.int64) * block_size, 0)
    return [
        {"worker_id": w, "potential_prefill_tokens": int(u), "potential_decode_blocks": own_blocks}
        for w, u in zip(ids, uncached.tolist(), strict=True)
    ]


class OursPolicy:
    """``RouterService`` behind the replay's Policy hooks; sweeps on the virtual clock."""

    name = "ours"

    def __init__(
        self,
        config: RouterConfig,
        block_size: int = 64,
        sweep_interval_s: float = 1.0,
        admission_deadline_s: float | None = None,
    ) -> None:
        """``admission_deadline_s`` None: the processor's default; 0: admission off."""
        if admission_deadline_s is None:
            admission_deadline_s = ProcessorConfig.model_fields["admission_deadline_s"].default
        self.service = RouterService(config, block_size=block_size)
        self.queue = AdmissionQueue(admission_deadline_s) if admission_deadline_s > 0 else None
        self._held: dict[str, SimRequest] = {}
        self._waited_ms: dict[str, float] = {}  # held, then placed: its wait, until its finish
        self._changes = 0  # engine events since the queue's head was last tried
        self._tried_at = -1
        self._sweep_every = sweep_interval_s
        self._next_sweep = 0.0
        self._ids: list[int] = []
        self._engine = EngineReport()
        self._block_size = block_size

    @property
    def worker_ids(self) -> list[int]:
        """The instance ids the router knows the simulated workers by."""
        return self._ids

    def _workers(self, view: ClusterView) -> list[int]:
        if len(self._ids) != view.num_workers:
            self._ids = [_ID_BASE + i for i in range(view.num_workers)]
            cap = view.capacity_blocks.tolist()
            self._engine.capacity = {w: int(c) for w, c in zip(self._ids, cap, strict=True)}
        return self._ids

    def _decide(self, req: SimRequest, view: ClusterView, admit_within_ms: float | None) -> int:
        now = view.now_ms / 1000.0
        if now >= self._next_sweep:  # the processor's background sweep, on virtual time
            self.service.sweep(now)
            self._next_sweep = now + self._sweep_every
        ids = self._workers(view)
        t = req.trace
        route = route_request(req.request_id, t.hints or NO_HINTS, t.input_length, t.output_length)
        route.admit_within_ms = admit_within_ms
        route.block_hashes = req.block_list  # as the processor sends them
        rows = potential_load_rows(ids, view.overlap_blocks(req), t.input_length, self._block_size)
        msg = find_worker_message(route, rows, frozenset(ids), self._engine, self._block_size)  # type: ignore[arg-type]
        decision = self.service.find_worker(msg, now)
        return -1 if decision.reason == "held" else decision.worker_id - _ID_BASE

    def route(self, req: SimRequest, view: ClusterView) -> int:
        q = self.queue
        if q is None:
            return self._decide(req, view, None)
        w = self._decide(req, view, q.arrival_budget_ms())
        if w >= 0:
            return w
        hints = req.trace.hints or NO_HINTS
        if (
            q.push(
                req.request_id,
                view.now_ms / 1000.0,
                hints.priority or 0,
                hints.latency_sensitivity or 0.0,
            )
            is None
        ):
            return REFUSED
        self._held[req.request_id] = req
        self._changes += 1
        return -1

    def release(self, view: ClusterView) -> list[tuple[SimRequest, int]]:
        """Held requests placed now (their worker) or refused at their deadline (REFUSED)."""
        q = self.queue
        assert q is not None
        now = view.now_ms / 1000.0
        out = [(self._held.pop(h.request_id), REFUSED) for h in q.expire(now)]
        if self._changes == self._tried_at:  # nothing moved since the head was last tried
            return out
        while (h := q.head()) is not None:
            w = self._decide(self._held[h.request_id], view, h.left_ms(now))
            if w < 0:
                break
            q.admit(h.request_id, now)
            req = self._held.pop(h.request_id)
            self._waited_ms[req.request_id] = view.now_ms - req.arrival_ms
            out.append((req, w))
        self._tried_at = self._changes
        return out

    def wake_ms(self) -> float | None:
        """The next admission deadline, in virtual ms."""
        d = self.queue.next_deadline() if self.queue is not None else None
        return None if d is None else d * 1000.0

    def on_first_token(self, req: SimRequest, worker: int, now_ms: float) -> None:
        self._changes += 1
        self.service.feedback(Feedback(event="first_token", request_id=req.request_id))

    def on_finish(self, req: SimRequest, worker: int, now_ms: float, rec: RequestRecord) -> None:
        self._changes += 1
        # The processor's attempt starts after its decision (admission wait excluded).
        ttft_ms = rec.ttft_ms - self._waited_ms.pop(req.request_id, 0.0)
        self.service.feedback(
            finish_feedback(
                req.request_id,
                rec.input_length,
                rec.reused_tokens,
                ttft_ms,
                rec.itl_ms,
                rec.output_length,
                "ok",
            )
        )
