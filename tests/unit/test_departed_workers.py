"""Workers that leave discovery leave routing and the per-worker metric series behind them."""

from __future__ import annotations

import ast
import inspect
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest

import frontend.metrics
import processor.metrics
import router.metrics
from processor.handler import ProcessorHandler
from processor.health import WorkerHealth
from processor.metrics import SERIES_LINGER_S, ProcessorMetrics
from processor.routing import Quarantine, drop_departed, nothing_swept


class _RecordingRouting:
    """Only ``remove_worker`` of the ``Routing`` protocol is used by ``drop_departed``."""

    def __init__(self) -> None:
        self.removed: list[int] = []

    def remove_worker(self, worker_id: int) -> None:
        self.removed.append(worker_id)


class _NoRouting:
    """A router whose state lives elsewhere: nothing to sweep, nothing to forget."""

    def maintain(self, now: float) -> dict[str, int]:
        return nothing_swept()

    def remove_worker(self, worker_id: int) -> None:
        pass


def sweeping_handler(
    instance_ids: Callable[[], list[int]], routing: Any, known: frozenset[int]
) -> ProcessorHandler:
    """A handler with just what its background sweep (``_sweep_once``) reads."""
    h = object.__new__(ProcessorHandler)
    h._client = SimpleNamespace(instance_ids=instance_ids)
    h.routing = routing
    h._known_workers = known
    h.metrics = ProcessorMetrics()
    h._quarantine = Quarantine(10.0)
    h.health = WorkerHealth(None, 60.0)
    h.engine = None
    h.prompt_limit = None
    h._writer = None
    return h


def test_drop_departed_removes_only_the_departed() -> None:
    routing = _RecordingRouting()
    known = drop_departed(routing, frozenset(), frozenset({1, 2, 3}))
    assert known == {1, 2, 3} and routing.removed == []
    known = drop_departed(routing, known, frozenset({2, 4}))
    assert known == {2, 4}
    assert sorted(routing.removed) == [1, 3]


def test_processor_metrics_forget_a_departed_workers_series() -> None:
    m = ProcessorMetrics()
    for worker, reason in ((0xA, "overlap"), (0xA, "load"), (0xB, "overlap")):
        m.decisions.labels(worker=f"{worker:x}", reason=reason).inc()
    m.worker_errors.labels(worker="a").inc()
    m.keep_workers(frozenset({0xB}), now=0.0)  # a left discovery
    m.keep_workers(frozenset({0xB}), now=SERIES_LINGER_S + 1.0)
    text = generate_latest(m.registry).decode()
    assert 'worker="a"' not in text
    assert 'akr_processor_decisions_total{reason="overlap",worker="b"} 1.0' in text


def test_a_crashed_workers_errors_show_as_an_increase() -> None:
    """A killed worker's streams all break at once, and discovery drops it about 10 s later.
    rate()/increase() count nothing of a series that is born at its final value or ends
    before a scrape saw it, so its errors must count from a 0 already scraped and stay
    after it left, for a few scrapes at least."""
    m = ProcessorMetrics()
    m.keep_workers(frozenset({0xA, 0xB}), now=0.0)
    assert 'akr_processor_worker_errors_total{worker="a"} 0.0' in _text(m)
    m.worker_errors.labels(worker="a").inc(3)  # its streams broke at the kill
    m.keep_workers(frozenset({0xB}), now=10.0)  # its lease ran out
    assert 'akr_processor_worker_errors_total{worker="a"} 3.0' in _text(m)
    m.keep_workers(frozenset({0xB}), now=10.0 + SERIES_LINGER_S + 1.0)
    assert 'worker="a"' not in _text(m)
    assert 'akr_processor_worker_errors_total{worker="b"} 0.0' in _text(m)


def _text(m: ProcessorMetrics) -> str:
    return generate_latest(m.registry).decode()


def test_learned_prefill_ratio_series_follow_the_learners_workers() -> None:
    m = ProcessorMetrics()
    m.observe_learner({0xA: 1.0, 0xB: 2.5})
    m.observe_learner({0xB: 2.0})  # the learner dropped worker a
    text = generate_latest(m.registry).decode()
    assert 'akr_processor_worker_prefill_ratio{worker="a"}' not in text
    assert 'akr_processor_worker_prefill_ratio{worker="b"} 2.0' in text


def test_quarantine_forgets_departed_and_expired_workers() -> None:
    q = Quarantine(60.0)
    q.add(1)
    q.add(2)
    assert q.healthy(frozenset({1, 2, 3})) == {3}
    q.prune(frozenset({1, 3}), now=0.0)  # 2 left discovery
    assert q.workers() == {1}
    q.prune(frozenset({1, 3}), now=float("inf"))  # 1's quarantine ran out
    assert q.workers() == frozenset() and q.healthy(frozenset({1, 3})) == {1, 3}


def test_health_does_not_count_a_quarantined_worker_even_the_only_one() -> None:
    """The only worker just failed a request and is quarantined. Routing, left with none
    else, still tries it, but a killed worker stays in discovery until its lease ends and every
    request to it fails: /health says no_workers, not ready (benchmarks.chaos no_worker)."""
    h = sweeping_handler(lambda: [7], _NoRouting(), frozenset({7}))
    h._sweep_once()
    assert h.health.answer(time.monotonic())[0] == 200
    h._quarantine.add(7)  # its request failed
    h._sweep_once()
    status, body = h.health.answer(time.monotonic())
    assert status == 503 and body["status"] == "no_workers", body


def test_prefix_table_evictions_are_exported_by_the_processor() -> None:
    """The in-process router's full-table evictions reach /metrics (a shared router exports
    its own): the counter follows the table's count since start, never twice."""
    m = ProcessorMetrics()
    for evicted in (3, 3, 5):
        m.sync_prefix_evictions(evicted)
    assert "akr_processor_prefix_evictions_total 5.0" in generate_latest(m.registry).decode()


def test_a_series_counted_after_its_worker_left_is_ended_after_the_linger() -> None:
    """A request can count against a worker after the sweep saw it leave: a silent worker's
    requests fail at their timeout (stream stall 30 s, first token 120 s), long after its
    lease ran out; a decision can land after an admission wait. That series must still end,
    or every worker id the fleet ever churned through keeps one."""
    live = [0xA, 0xB]
    h = sweeping_handler(lambda: live, _NoRouting(), frozenset())
    h._sweep_once()
    live.remove(0xA)  # its lease ran out: discovery dropped it
    h._sweep_once()
    h.metrics.worker_errors.labels(worker="a").inc()  # its request timed out only now
    h.metrics.decisions.labels(worker="a", reason="load").inc()
    h.metrics.decisions.labels(worker="b", reason="load").inc()
    h._sweep_once()
    h.metrics.keep_workers(frozenset(live), time.monotonic() + SERIES_LINGER_S + 1.0)
    text = generate_latest(h.metrics.registry).decode()
    assert 'worker="a"' not in text
    assert 'akr_processor_decisions_total{reason="load",worker="b"} 1.0' in text


def test_metrics_code_reads_no_private_field_of_prometheus_client() -> None:
    """Our metrics must rest on prometheus_client's public API only (``labels``, ``inc``,
    ``remove_by_labels`` ...): its private fields (``_metrics``, ``_lock``, ``_labelnames``,
    ``_value``) may change in any release. Every attribute read on something other than our
    own ``self`` must be public, in every metrics module."""
    for module in (processor.metrics, frontend.metrics, router.metrics):
        tree = ast.parse(inspect.getsource(module))
        private = [
            f"{module.__name__}:{node.lineno}: {ast.unparse(node)}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ]
        assert not private, private


def test_the_worker_labels_kept_for_ending_series_are_bounded() -> None:
    """Our own record of which worker labels have series is pruned by the same sweep: a fleet
    churning through worker ids leaves only the live ones in it, once the departed ones'
    linger is over."""
    m = ProcessorMetrics()
    step = processor.metrics.SERIES_LINGER_S + 1.0  # each departed worker's linger runs out
    for worker in range(1000):
        m.decisions.labels(worker=f"{worker:x}", reason="load").inc()
        m.worker_errors.labels(worker=f"{worker:x}").inc()
        m.keep_workers(frozenset({worker}), worker * step)
    m.keep_workers(frozenset({999}), 1000 * step)
    assert m.decisions.worker_labels() == {"3e7"}
    assert m.worker_errors.worker_labels() == {"3e7"}
    text = generate_latest(m.registry).decode()
    assert text.count("akr_processor_decisions_total{") == 1
    assert text.count("akr_processor_worker_errors_total{") == 1
