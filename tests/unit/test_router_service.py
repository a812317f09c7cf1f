"""RouterService: the three calls of a request's life, load accounting and learner state."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import threading
import time
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from router.config import RouterConfig
from router.load import HOLD_PRIOR_MS
from router.metrics import RouterCollector
from router.policy import RouteRequest
from router.service import (
    DEPARTED_AFTER_S,
    BlockSizeMismatch,
    Feedback,
    FindWorker,
    RouterService,
)

BS = 64
W1, W2 = 2**63 + 11, 2**63 + 22  # Dynamo instance ids are u64: above int64's range


def rows(uncached: dict[int, int], prompt: int) -> list[dict]:
    """KvRouter.get_potential_loads rows with no load of ours tracked there."""
    return [
        {
            "worker_id": w,
            "dp_rank": 0,
            "potential_prefill_tokens": u,
            "potential_decode_blocks": prompt // BS,
            "active_requests": 0,
        }
        for w, u in uncached.items()
    ]


def service() -> RouterService:
    return RouterService(RouterConfig(seed=3, bandit_enabled=False))


def find(svc: RouterService, rid: str, uncached: dict[int, int], prompt: int = 4096, **kw) -> int:
    msg = FindWorker(
        request=RouteRequest(request_id=rid, prompt_tokens=prompt, osl=64, **kw),
        rows=rows(uncached, prompt),
    )
    return svc.find_worker(msg, now=1.0).worker_id


def test_find_worker_prefers_the_cached_worker_and_accounts_its_load() -> None:
    svc = service()
    assert find(svc, "a", {W1: 4096, W2: 64}) == W2
    load = svc.load.get(W2)
    assert (load.active_requests, load.queued_prefill_tokens) == (1, 64)
    svc.feedback(Feedback(event="first_token", request_id="a"))
    assert svc.load.get(W2).queued_prefill_tokens == 0
    svc.feedback(
        Feedback(
            event="finish",
            request_id="a",
            ttft_ms=5.0,
            itl_ms=1.0,
            uncached_tokens=64,
            output_tokens=64,
        )
    )
    assert svc.load.get(W2).active_requests == 0


def test_load_of_requests_in_flight_moves_new_work_away() -> None:
    svc = service()
    first = find(svc, "a", {W1: 4096, W2: 4096})
    # the first request has not produced a token: its 4096 tokens are queued there
    second = find(svc, "b", {W1: 4096, W2: 4096})
    assert second != first


def test_cancelled_requests_release_load_without_feedback() -> None:
    svc = service()
    wid = find(svc, "a", {W1: 4096, W2: 4096})
    svc.feedback(Feedback(event="finish", request_id="a", cancelled=True))
    assert svc.load.get(wid).active_requests == 0
    assert svc.router.stats()["pending_feedback"] == 0
    assert svc.router.feedback.reports == 0 and svc.router.feedback.failures == 0


def test_live_filter_excludes_workers_the_caller_cannot_reach() -> None:
    svc = service()
    msg = FindWorker(
        request=RouteRequest(request_id="a", prompt_tokens=4096),
        rows=rows({W1: 4096, W2: 0}, 4096),
        live=[W1],
    )
    assert svc.find_worker(msg, now=1.0).worker_id == W1


def test_learner_state_survives_a_restart(tmp_path: Path) -> None:
    cfg = RouterConfig(seed=1)
    svc = RouterService(cfg)
    for i in range(60):  # W1 is consistently slow
        wid = find(svc, f"r{i}", {W1: 4096, W2: 4096})
        svc.feedback(
            Feedback(
                event="finish",
                request_id=f"r{i}",
                ttft_ms=900.0 if wid == W1 else 60.0,
                itl_ms=5.0,
                uncached_tokens=4096,
                output_tokens=64,
            )
        )
    path = tmp_path / "state" / "router.json"
    asyncio.run(svc.save_state(path))
    restored = RouterService(cfg)
    assert asyncio.run(restored.load_state(path))
    assert not asyncio.run(RouterService(cfg).load_state(tmp_path / "missing.json"))
    assert restored.router.state_dict() == svc.router.state_dict()
    # and the restored learner still prefers the fast worker on a tie
    picks = []
    for i in range(10):  # one at a time, so in-flight load plays no part
        picks.append(find(restored, f"n{i}", {W1: 4096, W2: 4096}))
        restored.feedback(Feedback(event="finish", request_id=f"n{i}", cancelled=True))
    assert picks.count(W2) >= 8, picks


def test_unusable_learner_state_is_skipped_and_leaves_the_learner_as_it_was(
    tmp_path: Path,
) -> None:
    """Another version's file, damaged JSON or damaged content: load_state says False and the
    learner is untouched, so the process (processor or standalone router) starts anyway."""
    svc = RouterService(RouterConfig(seed=1))
    for i in range(5):
        find(svc, f"r{i}", {W1: 4096, W2: 4096})
        svc.feedback(Feedback(event="finish", request_id=f"r{i}", ttft_ms=80.0, itl_ms=5.0))
    before = svc.router.state_dict()
    assert len(before["workers"]) == 2
    damaged = json.loads(json.dumps(before))
    next(iter(damaged["workers"].values()))["ttft"]["precision"] = [[1.0]]
    files = {
        "old.json": json.dumps({"version": 1, "features": ["bias", "uncached_ktok"]}),
        "torn.json": '{"version": 2, "feat',
        "list.json": "[1, 2]",
        "damaged.json": json.dumps(damaged),
    }
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text)
        assert not asyncio.run(svc.load_state(path)), name
        assert svc.router.state_dict() == before, name


def test_load_of_requests_whose_end_never_arrives_expires() -> None:
    svc = service()
    wid = find(svc, "lost", {W1: 4096, W2: 4096})  # placed at now=1.0
    assert svc.load.get(wid).active_requests == 1
    timeout = svc.config.feedback_timeout_s
    assert svc.sweep(1.0 + timeout - 0.5)["load_expired"] == 0  # younger than the timeout
    swept = svc.sweep(1.0 + timeout + 0.5)
    assert swept["load_expired"] == 1
    assert svc.load.get(wid).active_requests == 0 and len(svc.load) == 0


def test_load_starts_at_the_callers_now_not_the_wall_clock() -> None:
    """The router reads no clock: a request placed at now=1000 s (far from any real monotonic
    reading) is started at exactly that time and expires relative to it."""
    svc = service()
    msg = FindWorker(
        request=RouteRequest(request_id="r", prompt_tokens=4096, osl=64),
        rows=rows({W1: 4096, W2: 4096}, 4096),
    )
    svc.find_worker(msg, now=1000.0)
    assert svc.load._active["r"].started == 1000.0
    timeout = svc.config.feedback_timeout_s
    assert svc.sweep(1000.0 + timeout - 0.5)["load_expired"] == 0
    assert svc.sweep(1000.0 + timeout + 0.5)["load_expired"] == 1


def test_unique_blocks_count_a_shared_prefix_once_and_are_released() -> None:
    """Two requests in flight share a 3-block system prompt: Dynamo-style decode blocks count
    it twice, the unique count once; a third prompt finds the shared prefix; finishing and
    expiring release every reference."""
    from router.load import LoadTracker

    load = LoadTracker(BS)
    load.start("a", 7, 0, prompt_tokens=5 * BS, osl=BS, hashes=(1, 2, 3, 10, 11), now=1.0)
    load.start("b", 7, 0, prompt_tokens=4 * BS + 10, osl=BS, hashes=(1, 2, 3, 20), now=1.0)
    w = load.get(7)
    assert w.decode_blocks == 6 + 6
    assert w.used_blocks == 6 + (
        1 + 2
    )  # 6 distinct prompt blocks + (a: output; b: output + partial)
    assert w.shared_prefix((1, 2, 3, 30, 31)) == 3 and w.shared_prefix((9, 90, 91)) == 0
    assert w.shared_prefix((1, 2, 3, 10, 11, 12)) == 5
    load.finish("a")
    assert load.get(7).used_blocks == 4 + 2 and load.get(7).shared_prefix((1, 2, 3, 10)) == 3
    assert load.expire(started_before=float("inf")) == 1 and load.busy() == {}


def test_an_id_reused_while_in_flight_leaks_no_load() -> None:
    """The same request id placed twice before it ends (two callers of a shared router):
    the first placement's load is released, not kept for ever."""
    from router.load import LoadTracker

    load = LoadTracker(BS)
    load.start("dup", 7, 640, prompt_tokens=10 * BS, osl=BS, hashes=tuple(range(10)), now=1.0)
    load.start("dup", 8, 640, prompt_tokens=10 * BS, osl=BS, hashes=tuple(range(10)), now=1.0)
    load.finish("dup")
    load.finish("dup")
    assert len(load) == 0 and load.busy() == {}


def test_the_kv_hold_time_is_learned_from_how_long_requests_decode() -> None:
    """A request holds its blocks while it decodes: output tokens after the first x ITL, as
    the finish reports them. The first report replaces the prior; later ones move an
    average. Failed, cancelled and one-token answers say nothing about it."""
    svc = RouterService(RouterConfig(seed=3))
    assert svc.load.hold_ms == HOLD_PRIOR_MS
    finish = Feedback(event="finish", request_id="a", ttft_ms=50.0, itl_ms=20.0, output_tokens=101)
    svc.feedback(finish)
    assert svc.load.hold_ms == pytest.approx(2000.0)
    for quiet in (
        Feedback(event="finish", request_id="b", itl_ms=90.0, output_tokens=101, ok=False),
        Feedback(event="finish", request_id="c", itl_ms=90.0, output_tokens=101, cancelled=True),
        Feedback(event="finish", request_id="d", ttft_ms=50.0, output_tokens=1),
    ):
        svc.feedback(quiet)
    assert svc.load.hold_ms == pytest.approx(2000.0)
    svc.feedback(
        Feedback(event="finish", request_id="e", ttft_ms=5.0, itl_ms=40.0, output_tokens=101)
    )
    assert 2000.0 < svc.load.hold_ms < 4000.0
    # Exported as operators read it: the unit of the KV-full wait.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(svc))
    assert registry.get_sample_value("akr_router_kv_hold_ms") == svc.load.hold_ms


def test_a_request_that_would_not_fit_goes_where_it_fits() -> None:
    """Worker W1 holds this prompt's first 40 blocks (a request in flight there shares them)
    and wins on cache, but with that request's 61 distinct blocks in use, this one's other 24
    prompt blocks + 1 output block exceed W1's 80: the engine would make it wait for blocks.
    With its block hashes the router sees it and sends the request to W2, where it fits;
    without them (no distinct-block count), the cache wins."""

    def run(send_hashes: bool) -> int:
        svc = RouterService(RouterConfig(seed=3, bandit_enabled=False, worker_capacity_blocks=80))
        svc.load.finish("earlier", decode_ms=500.0)  # a request held its blocks 500 ms
        shared = [1000 + i for i in range(40)]
        svc.load.start(
            "busy",
            W1,
            0,
            prompt_tokens=60 * BS,
            osl=BS,
            hashes=tuple(shared + [2000 + j for j in range(20)]),
            now=1.0,
        )
        assert svc.load.get(W1).used_blocks == 61
        hashes = shared + [9000 + j for j in range(24)]
        msg = FindWorker(
            request=RouteRequest(
                request_id="r",
                prompt_tokens=4096,
                osl=64,
                block_hashes=hashes if send_hashes else None,
            ),
            rows=rows({W1: 4096 - 40 * BS, W2: 4096}, 4096),
        )
        decision = svc.find_worker(msg, now=1.0)
        by_worker = {c.worker_id: c for c in decision.candidates}
        # 61 blocks in flight + 25 new (65 minus the 40 shared) overflow the 80 by 6: the one
        # request there must end, half a hold on average.
        wait = 500.0 / 2 if send_hashes else 0.0
        assert by_worker[W1].terms["kv_full_ms"] == pytest.approx(wait)
        assert by_worker[W2].terms["kv_full_ms"] == 0.0
        return decision.worker_id

    assert run(False) == W1
    assert run(True) == W2


def test_a_router_counts_in_one_block_size_and_refuses_another() -> None:
    """A standalone router (built without a block size) takes the first caller's; a caller
    that counts in another size is refused with an error naming both. An in-process service
    built with the workers' size refuses any other too."""
    standalone = RouterService(RouterConfig(seed=3, bandit_enabled=False), block_size=None)

    def message(rid: str, block_size: int | None) -> FindWorker:
        return FindWorker(
            request=RouteRequest(request_id=rid, prompt_tokens=4096, osl=64),
            rows=rows({W1: 4096, W2: 2048}, 4096),
            block_size=block_size,
        )

    standalone.find_worker(message("a", 32), now=1.0)
    assert standalone.block_size == standalone.load.block_size == standalone.router.block_size
    assert standalone.block_size == 32
    standalone.find_worker(message("b", None), now=1.0)  # no size named: the router's own
    with pytest.raises(BlockSizeMismatch, match="of 64 tokens, this router 32"):
        standalone.find_worker(message("c", 64), now=1.0)
    in_process = RouterService(RouterConfig(seed=3), block_size=16)
    with pytest.raises(BlockSizeMismatch):
        in_process.use_block_size(64)


def test_learner_state_with_out_of_range_numbers_is_skipped(tmp_path: Path) -> None:
    """json reads NaN and Infinity: a state file carrying them (or a negative count) is not
    usable. Loaded, a NaN baseline made every later posterior NaN, an infinite vector made its
    worker win every decision, a count of -1 divided by zero in the next feedback, and an
    infinite count raised OverflowError out of load_state: the process did not start."""
    svc = RouterService(RouterConfig(seed=1))
    for i in range(5):
        find(svc, f"r{i}", {W1: 4096, W2: 4096})
        svc.feedback(Feedback(event="finish", request_id=f"r{i}", ttft_ms=80.0, itl_ms=5.0))
    before = svc.router.state_dict()

    def damaged(edit) -> str:
        state = json.loads(json.dumps(before))
        edit(state)
        return json.dumps(state)

    def worker(state: dict) -> dict:
        return next(iter(state["workers"].values()))["ttft"]

    edits = {
        "nan_baseline": lambda s: s["baseline"].update(ttft=float("nan")),
        "inf_baseline_n": lambda s: s["baseline_n"].update(ttft=float("inf")),
        "negative_baseline_n": lambda s: s["baseline_n"].update(ttft=-1),
        "inf_b": lambda s: worker(s)["b"].__setitem__(0, float("inf")),
        "nan_precision": lambda s: worker(s)["precision"][0].__setitem__(0, float("nan")),
        "nan_count": lambda s: worker(s).update(count=float("nan")),
    }
    for name, edit in edits.items():
        path = tmp_path / f"{name}.json"
        path.write_text(damaged(edit))
        assert not asyncio.run(svc.load_state(path)), name
        assert svc.router.state_dict() == before, name


def test_workers_that_left_every_callers_fleet_are_forgotten() -> None:
    """A standalone router is told of no departures (RemoteRouting.remove_worker does
    nothing): a worker absent from the callers' rows for DEPARTED_AFTER_S is forgotten, so
    the learner (swept every second), its state file and its metric series do not grow with
    every instance id a restarting fleet ever had. No decisions at all: nothing ages."""
    svc = RouterService(RouterConfig(seed=1), block_size=None)
    now = 0.0
    for gen in range(5):  # each generation of two workers replaces the last one's
        fleet = {1000 + 2 * gen: 4096, 1001 + 2 * gen: 4096}
        for i in range(4):
            rid = f"g{gen}r{i}"
            msg = FindWorker(
                request=RouteRequest(request_id=rid, prompt_tokens=4096, osl=64),
                rows=rows(fleet, 4096),
                block_size=BS,
            )
            svc.find_worker(msg, now)
            svc.feedback(Feedback(event="finish", request_id=rid, ttft_ms=80.0, itl_ms=5.0))
            now += 1.0
            svc.sweep(now)
        now += DEPARTED_AFTER_S
        svc.sweep(now)
    assert sorted(svc.router.bandit.workers) == [1008, 1009]
    svc.sweep(now + 10 * DEPARTED_AFTER_S)  # an idle router keeps what it learned
    assert sorted(svc.router.bandit.workers) == [1008, 1009]


def test_a_feedback_message_with_an_unknown_event_is_refused() -> None:
    """Any event but "first_token" was taken for "finish": a misspelt first-token message
    ended the request's load and its decision (counted as an unmeasured answer)."""
    from router.__main__ import RouterEndpoints

    svc = service()
    endpoints = RouterEndpoints(svc, lambda: 1.0)
    wid = find(svc, "a", {W1: 4096, W2: 4096})

    async def send(payload: dict) -> None:
        async for _ in endpoints.feedback(payload):
            pass

    with pytest.raises(msgspec.ValidationError, match="event"):
        asyncio.run(send({"event": "first-token", "request_id": "a"}))
    assert svc.load.get(wid).active_requests == 1
    assert svc.router.stats()["pending_feedback"] == 1
    asyncio.run(send({"event": "first_token", "request_id": "a"}))
    assert svc.load.get(wid).queued_prefill_tokens == 0


@pytest.mark.parametrize("size", [0, -64])
def test_a_block_size_below_one_is_refused_and_not_adopted(size: int) -> None:
    """A standalone router adopts the first caller's block size. A first message naming 0
    (or less) was adopted: it raised ZeroDivisionError itself and every later caller, with the
    workers' real size, was refused as a mismatch until the router restarted."""
    svc = RouterService(RouterConfig(seed=3, bandit_enabled=False), block_size=None)

    def ask(rid: str, block_size: int) -> int:
        msg = FindWorker(
            request=RouteRequest(request_id=rid, prompt_tokens=4096),
            rows=rows({W1: 4096, W2: 64}, 4096),
            block_size=block_size,
        )
        return svc.find_worker(msg, now=1.0).worker_id

    with pytest.raises(ValueError, match="block size"):
        ask("bad", size)
    assert svc.block_size is None
    assert ask("good", BS) == W2


def test_overlapping_state_saves_do_not_clobber_each_other(tmp_path, monkeypatch) -> None:
    """The shutdown save can run while a periodic save is still in its thread: each writes a
    temporary file of its own, so both renames succeed and the file is one whole snapshot
    (with one shared temporary name the second save moved the first's file away)."""
    import os
    import threading

    import router.service as service_module

    path = tmp_path / "state.json"
    first_in_rename, release = threading.Event(), threading.Event()
    real_replace = os.replace

    def slow_first_replace(src: str, dst: object) -> None:
        if not first_in_rename.is_set():
            first_in_rename.set()
            assert release.wait(10)
        real_replace(src, dst)

    monkeypatch.setattr(service_module.os, "replace", slow_first_replace)
    errors: list[BaseException] = []

    def periodic_save() -> None:
        try:
            service_module.write_atomic(path, b'{"snapshot": 1}')
        except BaseException as exc:  # seen by the test, not lost in the thread
            errors.append(exc)

    periodic = threading.Thread(target=periodic_save)
    periodic.start()
    assert first_in_rename.wait(10)
    service_module.write_atomic(path, b'{"snapshot": 2}')  # the shutdown save, meanwhile
    release.set()
    periodic.join(10)
    assert errors == []
    assert json.loads(path.read_text()) in ({"snapshot": 1}, {"snapshot": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


async def test_learner_state_is_read_off_the_event_loop(tmp_path: Path) -> None:
    """load_state runs in the processor's and the router's start-up coroutine, on the event
    loop. A state file on a slow disk (here a FIFO whose data comes 0.5 s late) must not stop
    that loop: other tasks keep running while it is read, and the state still loads."""
    data = RouterService(RouterConfig(seed=1)).state_bytes()
    path = tmp_path / "router.json"
    os.mkfifo(path)

    def slow_disk() -> None:
        time.sleep(0.5)
        with open(path, "wb") as f:
            f.write(data)

    threading.Thread(target=slow_disk, daemon=True).start()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    loaded = RouterService(RouterConfig(seed=1)).load_state(path)
    if inspect.isawaitable(loaded):  # before the fix it was a plain call that blocked
        loaded = await loaded
    ticker.cancel()
    assert loaded
    assert ticks >= 5, f"the event loop stood still while the state was read ({ticks} ticks)"


def test_a_standalone_router_refuses_more_block_hashes_than_the_prompt_has_blocks() -> None:
    """A remote caller's ``request.block_hashes`` longer than its prompt's blocks
    (ceil(prompt_tokens / block_size)) was taken as is: 1,000,000 hashes for a 64-block
    prompt took 0.3 s to decide on the router's loop and held ~42 MB per request until its
    finish or the feedback timeout (router/load.py keeps every hash of a request in flight).
    It is refused with an error naming the field, before any state is touched; a list up to
    the prompt's blocks (the partial last one included) is still taken."""
    from router.__main__ import RouterEndpoints

    svc = RouterService(RouterConfig(seed=3), block_size=None)
    endpoints = RouterEndpoints(svc, lambda: 1.0)

    async def ask(rid: str, prompt: int, n_hashes: int) -> dict:
        msg = FindWorker(
            request=RouteRequest(
                request_id=rid, prompt_tokens=prompt, osl=64, block_hashes=list(range(n_hashes))
            ),
            rows=rows({W1: prompt, W2: prompt}, prompt),
            block_size=BS,
        )
        async for answer in endpoints.find_worker(msgspec.to_builtins(msg)):
            return answer
        raise AssertionError("no decision")

    for prompt, n in ((64 * BS, 65), (64 * BS + 1, 66), (64 * BS, 1_000_000), (0, 1)):
        with pytest.raises(ValueError, match=r"request\.block_hashes"):
            asyncio.run(ask("bad", prompt, n))
    assert len(svc.load) == 0 and not svc.load.busy()
    assert svc.router.stats()["pending_feedback"] == 0
    asyncio.run(ask("full", 64 * BS, 64))
    asyncio.run(ask("partial", 64 * BS + 1, 65))
    assert len(svc.load) == 2
