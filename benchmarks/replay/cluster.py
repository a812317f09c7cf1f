"""A cluster of simulated mocker engines on one virtual clock, with a routing policy in front.

``run_replay`` follows Dynamo 1.6.1's offline replay loop: at each instant it first settles the
passes that end then (their KV events reach the router's index, their tokens and completions
reach the policy), then routes the requests that arrive then, then starts a pass on every idle
worker that has work. A request with a ``parent`` arrives ``delay_ms`` after the parent's last
token (never before its own ``arrival_ms``).

Admission: a policy may answer ``QUEUED`` instead of a worker and keep the request; the loop
then asks its ``release(view)`` at every instant for the held requests it now places or
refuses (``REFUSED``), and wakes at its ``wake_ms()``. A refused request is recorded as
``refused``, and so is every request that depends on it: its conversation was not served.

The policy sees the cluster through a ``ClusterView``: per-worker prefix overlap as a KV router
fed by the engines' KV events would see it (events delivered at the end of the pass that
produced them, plus ``kv_event_lag_ms``), queue lengths and capacities.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from benchmarks.replay.engine import Engine, EngineState, PassResult, mix64
from benchmarks.replay.records import RequestRecord
from benchmarks.replay.trace import TraceRequest


@dataclass(frozen=True)
class ClusterConfig:
    """The simulated cluster: one mocker engine configuration per worker (Dynamo's defaults),
    with an optional relative speed per worker for heterogeneous clusters."""

    num_workers: int
    num_gpu_blocks: int = 16384
    block_size: int = 64
    speeds: Sequence[float] | None = None  # per-worker multiplier of speedup_ratio
    speedup_ratio: float = 1.0
    decode_speedup_ratio: float = 1.0  # decode only, on top of speedup_ratio (the mocker's)
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_chunked_prefill: bool = True
    watermark: float = 0.0  # the 1.6.1 mocker admits against the free blocks, no watermark
    arrival_speedup_ratio: float = 1.0
    kv_event_lag_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.speeds is not None and len(self.speeds) != self.num_workers:
            n = len(self.speeds)
            raise ValueError(f"speeds has {n} entries for {self.num_workers} workers")
        if self.watermark != 0.0:
            raise ValueError("the 1.6.1 mocker has no admission watermark; leave it at 0")
        if self.arrival_speedup_ratio <= 0:
            raise ValueError("arrival_speedup_ratio must be > 0")
        if self.kv_event_lag_ms < 0:
            raise ValueError("kv_event_lag_ms must be >= 0")

    def worker_speed(self, w: int) -> float:
        """The effective speedup of worker ``w`` (the mocker's speedup_ratio times its speed)."""
        return self.speedup_ratio * (1.0 if self.speeds is None else float(self.speeds[w]))

    @property
    def capacity_blocks(self) -> np.ndarray:
        """KV blocks per worker."""
        return np.full(self.num_workers, self.num_gpu_blocks, dtype=np.int64)


_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + _GOLD
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def block_hashes_of(req: TraceRequest, cluster: ClusterConfig) -> np.ndarray:
    """The engine-size block identities of the prompt's full blocks.

    Dynamo's replay turns trace block ``k`` into ``hash_block`` copies of one token (the
    interned hash id) and hashes the prompt in chained blocks of ``block_size`` tokens; two
    blocks are the same iff the whole token prefix up to their end is. Here block ``j`` is the
    mix of a chain over the hash ids it and its prefix cover and of ``j`` itself, which is
    equal exactly when that prefix is.
    """
    bs = cluster.block_size
    n = req.input_length // bs
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    hb = req.hash_block
    # Hash id index covering the last token of each engine block.
    last_tok = (np.arange(n, dtype=np.int64) + 1) * bs - 1
    k_of = last_tok // hb
    kmax = int(k_of[-1])
    chain = np.empty(kmax + 1, dtype=np.uint64)
    c = 0x6A09E667F3BCC908
    for k in range(kmax + 1):
        c = mix64(c ^ (req.hash_ids[k] & ((1 << 64) - 1)))
        chain[k] = c
    with np.errstate(over="ignore"):
        return _splitmix(chain[k_of] ^ _splitmix(np.arange(n, dtype=np.uint64)))


REFUSED = -2  # the policy refused the request (the client would get 503)


@dataclass(slots=True, eq=False)
class SimRequest:
    """A request inside the replay: its trace row, its prompt's block identities, its worker."""

    request_id: str
    trace: TraceRequest
    blocks: np.ndarray  # uint64 block identities of the prompt's full blocks
    arrival_ms: float = 0.0  # when it reached the router (after any dependency's gap)
    worker: int = -1
    block_list: list[int] = field(default_factory=list)


_NO_BLOCKS = np.zeros(0, np.uint64)


class KvIndex:
    """Which workers hold which cached block, as the router's indexer sees the KV events."""

    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers
        self._masks: dict[int, int] = {}
        self._all = (1 << num_workers) - 1
        self.version = 0  # bumped by every apply: an overlap read before it is stale

    def apply(self, worker: int, events: Sequence[int]) -> None:
        """Apply one pass's KV events in order (``h`` stored, ``~h`` removed)."""
        self.version += 1
        masks = self._masks
        bit = 1 << worker
        keep = ~bit
        for h in events:
            if h >= 0:
                masks[h] = masks.get(h, 0) | bit
            else:
                h = ~h
                m = masks.get(h, 0) & keep
                if m:
                    masks[h] = m
                else:
                    masks.pop(h, None)

    def overlap(self, blocks: list[int]) -> np.ndarray:
        """Leading blocks of ``blocks`` held by each worker."""
        out = np.zeros(self.num_workers, dtype=np.int64)
        masks = self._masks
        alive = self._all
        n = 0
        for h in blocks:
            m = masks.get(h, 0) & alive
            if m != alive:
                gone = alive & ~m
                while gone:
                    low = gone & -gone
                    out[low.bit_length() - 1] = n
                    gone ^= low
                alive = m
                if not alive:
                    return out
            n += 1
        while alive:
            low = alive & -alive
            out[low.bit_length() - 1] = n
            alive ^= low
        return out


class ClusterView:
    """What a policy may read at a routing decision."""

    def __init__(self, cluster: ClusterConfig, engines: list[Engine], index: KvIndex) -> None:
        self.cluster = cluster
        self.num_workers = cluster.num_workers
        self.block_size = cluster.block_size
        self.capacity_blocks = cluster.capacity_blocks
        self.speeds = np.array([cluster.worker_speed(w) for w in range(self.num_workers)])
        self.now_ms = 0.0
        self._engines = engines
        self._index = index
        self._ov_req: SimRequest | None = None
        self._ov_version = -1
        self._ov = np.zeros(self.num_workers, dtype=np.int64)

    def overlap_blocks(self, req: SimRequest) -> np.ndarray:
        """Leading prompt blocks of ``req`` each worker holds, per the router's KV index now
        (a held request asked again later sees the KV events since, as a live KvRouter)."""
        if req is not self._ov_req or self._index.version != self._ov_version:
            self._ov = self._index.overlap(req.block_list)
            self._ov_req = req
            self._ov_version = self._index.version
        return self._ov

    def waiting(self) -> np.ndarray:
        """Requests queued (not yet admitted, or preempted) in each engine."""
        return np.fromiter((len(e.waiting) for e in self._engines), np.int64, self.num_workers)

    def running(self) -> np.ndarray:
        """Requests admitted and running in each engine."""
        return np.fromiter((len(e.running) for e in self._engines), np.int64, self.num_workers)

    def active_blocks(self) -> np.ndarray:
        """KV blocks held by running requests in each engine (engine truth, not an estimate)."""
        it = (e.num_active_blocks() for e in self._engines)
        return np.fromiter(it, np.int64, self.num_workers)


QUEUED = -1  # what ``Policy.route`` returns for a request it holds back in its own queue


class Policy(Protocol):
    """A routing policy: picks the worker at arrival and hears back from the engines. A policy
    with a router-side queue returns ``QUEUED`` and hands the request out later through an
    optional ``release(view) -> [(request, worker), ...]``, asked after every engine update."""

    name: str

    def route(self, req: SimRequest, view: ClusterView) -> int: ...

    def on_first_token(self, req: SimRequest, worker: int, now_ms: float) -> None: ...

    def on_finish(
        self, req: SimRequest, worker: int, now_ms: float, rec: RequestRecord
    ) -> None: ...


class AdmittingPolicy(Policy, Protocol):
    """A policy that may answer ``QUEUED`` from ``route``."""

    def release(self, view: ClusterView) -> list[tuple[SimRequest, int]]: ...

    def wake_ms(self) -> float | None: ...


def _record(sim: SimRequest, s: EngineState, index: int) -> RequestRecord:
    assert s.first_token_ms is not None and s.finish_ms is not None
    itl = (s.finish_ms - s.first_token_ms) / (s.generated - 1) if s.generated > 1 else None
    return RequestRecord(
        index=index,
        request_id=sim.request_id,
        worker=sim.worker,
        arrival_ms=sim.arrival_ms,
        first_token_ms=s.first_token_ms,
        finish_ms=s.finish_ms,
        input_length=sim.trace.input_length,
        output_length=s.generated,
        reused_tokens=s.reused_tokens or 0,
        ttft_ms=s.first_token_ms - sim.arrival_ms,
        e2e_ms=s.finish_ms - sim.arrival_ms,
        itl_ms=itl,
        session_id=sim.trace.session_id,
    )


def _refused(sim: SimRequest, trace: TraceRequest, index: int, now_ms: float) -> RequestRecord:
    return RequestRecord(
        index=index,
        request_id=sim.request_id,
        worker=-1,
        arrival_ms=sim.arrival_ms,
        first_token_ms=now_ms,
        finish_ms=now_ms,
        input_length=trace.input_length,
        output_length=0,
        reused_tokens=0,
        ttft_ms=float("inf"),
        e2e_ms=float("inf"),
        session_id=trace.session_id,
        refused=True,
    )


def _check_trace(trace: list[TraceRequest]) -> dict[int, list[int]]:
    """Reject requests the engine cannot replay; map each parent to its children."""
    pos = {r.index: i for i, r in enumerate(trace)}
    children: dict[int, list[int]] = {}
    for i, r in enumerate(trace):
        if r.input_length < 1 or r.output_length < 1:
            raise ValueError(f"request {r.index}: input and output lengths must be >= 1")
        if len(r.hash_ids) * r.hash_block < r.input_length:
            raise ValueError(f"request {r.index}: hash_ids do not cover {r.input_length} tokens")
        if r.parent is None:
            continue
        if r.parent not in pos:
            raise ValueError(f"request {r.index}: parent {r.parent} is not in the trace")
        if pos[r.parent] >= i:
            raise ValueError(f"request {r.index}: parent {r.parent} must come before it")
        children.setdefault(pos[r.parent], []).append(i)
    return children


def run_replay(
    trace: list[TraceRequest],
    cluster: ClusterConfig,
    policy: Policy,
    progress: bool = False,
    on_checkpoint: Callable[[int, list[RequestRecord]], None] | None = None,
    checkpoints: int = 4,
    on_pass: Callable[[int, float, PassResult, list[EngineState]], None] | None = None,
) -> list[RequestRecord]:
    """Replay ``trace`` through ``policy`` on ``cluster``; records in trace order.

    ``on_checkpoint(k, finished)`` is called each time another ``1/(checkpoints + 1)`` of the
    requests has finished, with the records so far: a tuner reads intermediate figures there
    and may stop a hopeless replay by raising. ``on_pass(worker, start_ms, result, prefilling)``
    sees every pass (analyses: benchmarks/replay/tail_parts.py)."""
    n_workers = cluster.num_workers
    engines = [
        Engine(
            cluster.num_gpu_blocks,
            cluster.block_size,
            cluster.max_num_seqs,
            cluster.max_num_batched_tokens,
            cluster.enable_chunked_prefill,
            cluster.worker_speed(w),
            cluster.decode_speedup_ratio,
        )
        for w in range(n_workers)
    ]
    if on_pass is not None:
        for w, eng in enumerate(engines):
            eng.on_pass = functools.partial(on_pass, w)
    index = KvIndex(n_workers)
    view = ClusterView(cluster, engines, index)
    children = _check_trace(trace)
    ratio = cluster.arrival_speedup_ratio
    lag = cluster.kv_event_lag_ms
    records: list[RequestRecord | None] = [None] * len(trace)
    sims: list[SimRequest | None] = [None] * len(trace)
    states: dict[int, int] = {}  # id(EngineState) -> trace position

    arrivals: list[tuple[float, int]] = [
        (r.arrival_ms / ratio, i) for i, r in enumerate(trace) if r.parent is None
    ]
    heapq.heapify(arrivals)
    passes: list[tuple[float, int, int]] = []  # (end_ms, seq, worker)
    deliveries: list[tuple[float, int, int, Sequence[int]]] = []
    in_flight: list[object] = [None] * n_workers  # PassResult of the running pass
    seq = 0
    n_done = 0
    marks = [len(trace) * (k + 1) // (checkpoints + 1) for k in range(checkpoints)]
    if on_checkpoint is None:
        marks = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(trace), unit="req", desc=f"replay {policy.name}")

    admitting = hasattr(policy, "release")
    wake_ms = getattr(policy, "wake_ms", lambda: None)  # a queue without deadlines has none
    position: dict[str, int] = {}  # request id -> trace position, while held

    def submit(pos: int, sim: SimRequest, w: int) -> int:
        if not 0 <= w < n_workers:
            raise ValueError(f"policy {policy.name} chose worker {w} of {n_workers}")
        r = trace[pos]
        sim.worker = w
        s = EngineState(sim, r.input_length, r.output_length, sim.block_list, cluster.block_size)
        s.salt = mix64(pos + 1)
        states[id(s)] = pos
        engines[w].submit(s)
        return w

    def refuse(pos: int, sim: SimRequest, t: float) -> None:
        todo = [(pos, sim)]
        while todo:
            p, sm = todo.pop()
            records[p] = _refused(sm, trace[p], p, t)
            sims[p] = None
            for child in children.get(p, ()):
                r = trace[child]
                todo.append((child, SimRequest(f"r{r.index}", r, _NO_BLOCKS, t)))
            if bar is not None:
                bar.update(1)

    def route(pos: int, t: float) -> int:
        r = trace[pos]
        blocks = block_hashes_of(r, cluster)
        sim = SimRequest(f"r{r.index}", r, blocks, t, -1, blocks.tolist())
        sims[pos] = sim
        w = policy.route(sim, view)
        if w == QUEUED and admitting:
            position[sim.request_id] = pos
            return QUEUED
        return submit(pos, sim, w)

    def settle_pass(w: int, t: float) -> None:
        nonlocal seq, n_done
        res = in_flight[w]
        in_flight[w] = None
        if res.kv_events:
            if lag > 0.0:
                heapq.heappush(deliveries, (t + lag, seq, w, res.kv_events))
                seq += 1
            else:
                index.apply(w, res.kv_events)
        for s in res.first_tokens:
            policy.on_first_token(s.req, w, t)
        for s in res.finished:
            pos = states.pop(id(s))
            sim = sims[pos]
            rec = _record(sim, s, pos)
            records[pos] = rec
            policy.on_finish(sim, w, t, rec)
            sims[pos] = None  # its block identities are no longer needed here
            for child in children.get(pos, ()):
                r = trace[child]
                heapq.heappush(arrivals, (max(r.arrival_ms / ratio, t + r.delay_ms), child))
        if bar is not None and res.finished:
            bar.update(len(res.finished))
        n_done += len(res.finished)
        while marks and n_done >= marks[0]:
            marks.pop(0)
            assert on_checkpoint is not None
            on_checkpoint(checkpoints - len(marks) - 1, [r for r in records if r is not None])

    inf = float("inf")
    dirty: set[int] = set()  # workers that may be idle with work at this instant
    while True:
        t = arrivals[0][0] if arrivals else inf
        if admitting and position:
            wake = wake_ms()
            if wake is not None and wake < t:
                t = max(wake, view.now_ms)
        if passes and passes[0][0] < t:
            t = passes[0][0]
        if deliveries and deliveries[0][0] < t:
            t = deliveries[0][0]
        if t == inf:
            break
        view.now_ms = t
        while True:
            changed = False
            while passes and passes[0][0] <= t:
                _, _, w = heapq.heappop(passes)
                settle_pass(w, t)
                dirty.add(w)
                changed = True
            while deliveries and deliveries[0][0] <= t:
                _, _, w, events = heapq.heappop(deliveries)
                index.apply(w, events)
                changed = True
            while arrivals and arrivals[0][0] <= t:
                _, pos = heapq.heappop(arrivals)
                w = route(pos, t)
                if w >= 0:
                    dirty.add(w)
                changed = True
            if position:
                for sim, w in policy.release(view):  # type: ignore[attr-defined]
                    pos = position.pop(sim.request_id)
                    if w == REFUSED:
                        refuse(pos, sim, t)
                    else:
                        dirty.add(submit(pos, sim, w))
                    changed = True
            if dirty:
                for w in sorted(dirty):
                    eng = engines[w]
                    if in_flight[w] is not None or not (eng.running or eng.waiting):
                        continue
                    res = eng.execute_pass(t)
                    if res.end_ms <= t and not res.finished and eng.has_work():
                        raise RuntimeError(f"worker {w} cannot make progress at {t} ms")
                    in_flight[w] = res
                    heapq.heappush(passes, (res.end_ms, seq, w))
                    seq += 1
                    changed = True
                dirty.clear()
            if not changed or not (
                (passes and passes[0][0] <= t)
                or (arrivals and arrivals[0][0] <= t)
                or (deliveries and deliveries[0][0] <= t)
            ):
                break
        if position and not (arrivals or passes or deliveries):
            wake = wake_ms()
            if wake is None:
                raise RuntimeError(f"policy {policy.name} holds requests with no wake time")
    if bar is not None:
        bar.close()
    missing = [i for i, rec in enumerate(records) if rec is None]
    if missing:
        raise RuntimeError(f"{len(missing)} requests never finished (first: {missing[0]})")
    return records  # type: ignore[return-value]
