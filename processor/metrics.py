"""Prometheus metrics of the processor, in a registry of its own served on a loopback port
(with ``/health``: processor/health.py).

Names follow Prometheus conventions (``_total`` counters, base units in seconds). The KV hit
ratio is exported both as its two counters (aggregate with ``rate(cached)/rate(prompt)``) and as
a gauge over the process lifetime for a quick look.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from router.jsonl_writer import LOSS_REASONS
from router.loop_lag import LOOP_LAG_BUCKETS
from router.metrics import CLAIMS_HELP, KV_HOLD_HELP
from router.unavailable import REASONS as UNAVAILABLE_REASONS

# How a request ends (processor/handler.py), the label of akr_processor_requests_total.
OUTCOMES = ("ok", "cancelled", "rejected", "unavailable", "error")

# Seconds, up to what a request may take and still be answered: its first token alone may
# come after (1 + max_retries) x first_token_timeout_s (360 s by default); a value above the
# top bound would read as that bound in every quantile.
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
# How long the per-worker counters of a worker that left discovery are kept: a killed
# worker's streams break about 10 s before discovery drops it, and the requests a silent one
# held fail at their timeout (first token: 120 s by default) after that. Their counts must be
# scraped (Prometheus's default interval: 1 min) before the series end.
SERIES_LINGER_S = 600.0
_DECISION_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
)


class ProcessorMetrics:
    """All metric objects of one processor; cheap to update on the request path."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # Totals this object keeps itself, as prometheus_client's values are private: what
        # each synced counter was raised to, and (prompt, cached) tokens for the hit ratio.
        self._synced: dict[str, float] = {}
        self._prompt_total = 0
        self._cached_total = 0
        self.requests = Counter(
            "akr_processor_requests", "Requests finished, by outcome.", ["outcome"], registry=r
        )
        self.ttft = Histogram(
            "akr_processor_ttft_seconds",
            "Time to first token seen by the processor.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "akr_processor_itl_seconds",
            "Mean inter-token latency of each request.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "akr_processor_e2e_seconds",
            "End-to-end time of each request in the processor.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decision = Histogram(
            "akr_processor_decision_seconds",
            "Time of one routing decision (signals + score).",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )
        self.decisions = _WorkerCounter(
            "akr_processor_decisions",
            "Routing decisions by chosen worker and reason.",
            ("worker", "reason"),
            r,
        )
        self.prompt_tokens = Counter(
            "akr_processor_prompt_tokens",
            "Prompt tokens of finished requests that a worker was given.",
            registry=r,
        )
        self.cached_tokens = Counter(
            "akr_processor_cached_tokens", "Prompt tokens served from the KV cache.", registry=r
        )
        self.output_tokens = Counter(
            "akr_processor_output_tokens", "Output tokens streamed back.", registry=r
        )
        self.kv_hit_ratio = Gauge(
            "akr_processor_kv_hit_ratio", "Cached / prompt tokens since start.", registry=r
        )
        self.active = Gauge(
            "akr_processor_active_requests", "Requests in flight in this processor.", registry=r
        )
        self.claims = Gauge(
            "akr_processor_claims",
            CLAIMS_HELP,
            registry=r,
        )
        self.tracked_prefixes = Gauge(
            "akr_processor_tracked_prefixes", "Prefixes in the router's table.", registry=r
        )
        self.kv_hold_ms = Gauge("akr_processor_kv_hold_ms", KV_HOLD_HELP, registry=r)
        self.prefix_evictions = Counter(
            "akr_processor_prefix_evictions",
            "Conversations forgotten because the router's table was full "
            "(AKR_ROUTER_PREFIX_TABLE_MAX_ENTRIES): their later turns lose their home.",
            registry=r,
        )
        self.trace_dropped = Counter(
            "akr_processor_trace_records_dropped",
            "Trace records that never reached the trace file, by reason (queue_full, closed, "
            "unencodable, unwritable, disk_full, io_error).",
            ["reason"],
            registry=r,
        )
        for reason in LOSS_REASONS:  # every series from 0, so increase() sees the first loss
            self.trace_dropped.labels(reason=reason)
        self.feedback_timeouts = Counter(
            "akr_processor_feedback_timeouts",
            "Decisions whose feedback never came and were swept with a penalty.",
            registry=r,
        )
        self.router_feedback_dropped = Counter(
            "akr_processor_router_feedback_dropped",
            "Feedback messages for a standalone router (AKR_PROCESSOR_ROUTER_ENDPOINT) never "
            "delivered: too many in flight, or the send failed. The router times those "
            "decisions out and releases their load only then.",
            registry=r,
        )
        self.worker_errors = _WorkerCounter(
            "akr_processor_worker_errors", "Worker failures, by worker.", ("worker",), r
        )
        self.retries = Counter(
            "akr_processor_retries",
            "Attempts on another worker after a worker failed before the attempt's first "
            "output (a request may retry more than once).",
            registry=r,
        )
        self.migrations = Counter(
            "akr_processor_migrations",
            "Continuations of an answer on another worker after its worker failed mid-stream "
            "(an answer may migrate more than once).",
            registry=r,
        )
        self.outputs_merged = Counter(
            "akr_processor_outputs_merged",
            "Worker outputs merged into the one before them because they queued up while the "
            "processor was busy (processor/relay.py): each saves one relay.",
            registry=r,
        )
        self.loop_lag = Histogram(
            "akr_processor_event_loop_lag_seconds",
            "How late a periodic timer fires on the processor's event loop: the wait of every "
            "ready callback (a new request, a token to relay) for the loop.",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.workers = Gauge(
            "akr_processor_workers",
            "Workers routable now: in discovery and not quarantined after a failure.",
            registry=r,
        )
        self.expected_workers = Gauge(
            "akr_processor_expected_workers",
            "Workers the processor expects to route to (setting, or the recent peak); more "
            "than akr_processor_workers means a worker was lost.",
            registry=r,
        )
        self.router_available = Gauge(
            "akr_processor_router_available",
            "1 while the processor has a router to place requests with: always with the "
            "in-process router; with a shared one (AKR_PROCESSOR_ROUTER_ENDPOINT) while one is "
            "in discovery and answers. 0: every request fails with 503 no_router (none in "
            "discovery) or router_timeout (it leaves calls unanswered).",
            registry=r,
        )
        self.router_available.set(1)  # until a shared router is looked for (handler.start)
        self.unavailable = Counter(
            "akr_processor_unavailable",
            "Requests failed as 'retry later' (503 with Retry-After at the gateway), by reason.",
            ["reason"],
            registry=r,
        )
        for reason in UNAVAILABLE_REASONS:  # from 0: rate() misses the burst that makes one
            self.unavailable.labels(reason=reason)
        for outcome in OUTCOMES:
            self.requests.labels(outcome=outcome)
        self.admission_depth = Gauge(
            "akr_processor_admission_queue_depth",
            "New conversations held because every worker is full.",
            registry=r,
        )
        self.admission_wait = Histogram(
            "akr_processor_admission_wait_seconds",
            "How long an admitted request waited in the admission queue.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self.worker_capacity = _per_worker_gauge(
            "akr_processor_worker_capacity_blocks",
            "KV capacity each worker reports in its model card, in router blocks.",
            r,
        )
        self.engine_waiting = _per_worker_gauge(
            "akr_processor_engine_waiting_requests",
            "Requests each worker's engine held back in its last forward pass (waiting for KV "
            "blocks or batch budget, or preempted).",
            r,
        )
        self._engine_labels: set[str] = set()
        self.prefill_ratio = _per_worker_gauge(
            "akr_processor_worker_prefill_ratio",
            "The learner's prefill time of each worker over the router's model (1 = as "
            "predicted, 2 = twice as slow): which worker is slow, and by how much.",
            r,
        )
        self._learner_labels: set[str] = set()
        self._departed: dict[str, float] = {}  # worker label -> when a sweep first missed it

    def observe_engine(self, capacity: dict[int, int], waiting: dict[int, int]) -> None:
        """Per-worker engine gauges; series of workers that left are removed (bounded)."""
        labels = {f"{w:x}": w for w in capacity.keys() | waiting.keys()}
        _remove_series(
            (self.worker_capacity, self.engine_waiting), self._engine_labels - labels.keys()
        )
        for label, w in labels.items():
            if w in capacity:
                self.worker_capacity.labels(worker=label).set(capacity[w])
            self.engine_waiting.labels(worker=label).set(waiting.get(w, 0))
        self._engine_labels = set(labels)

    def observe_learner(self, prefill_ratios: dict[int, float]) -> None:
        """Per-worker learned prefill ratios; series of workers the learner dropped are removed."""
        labels = {f"{w:x}": v for w, v in prefill_ratios.items()}
        _remove_series((self.prefill_ratio,), self._learner_labels - labels.keys())
        for label, v in labels.items():
            self.prefill_ratio.labels(worker=label).set(v)
        self._learner_labels = set(labels)

    def keep_workers(self, live: frozenset[int], now: float) -> None:
        """Per-worker counter series follow the fleet (each sweep, ``now`` monotonic).

        ``worker_errors`` starts at 0 for every live worker, so a worker's first errors are an
        increase that rate() sees (a series born at its value counts nothing). A worker not
        in ``live`` keeps its series for ``SERIES_LINGER_S`` after the first sweep that missed
        it, so its last counts are scraped, then they end: in a fleet that churns worker ids,
        labels of departed workers would otherwise pile up for good, including those counted
        after their worker left (a silent worker's requests fail at their timeout, long after
        its lease ran out; a decision can land after an admission wait)."""
        keep = {f"{w:x}" for w in live}
        for label in keep:
            self.worker_errors.labels(worker=label)
            self._departed.pop(label, None)
        gone = (self.decisions.worker_labels() | self.worker_errors.worker_labels()) - keep
        ended = set()
        for label in gone:
            if now - self._departed.setdefault(label, now) > SERIES_LINGER_S:
                del self._departed[label]
                ended.add(label)
        self.decisions.end(ended)
        self.worker_errors.end(ended)

    def sync_trace_lost(self, lost: dict[str, int]) -> None:
        """Raise the dropped-records counter to the trace writer's own counts (the writer
        counts on its task; the counter follows at each sweep)."""
        for reason, n in lost.items():
            self._raise_to(f"trace_dropped:{reason}", self.trace_dropped.labels(reason=reason), n)

    def sync_feedback_dropped(self, dropped: int) -> None:
        """Raise the dropped-feedback counter to the shared router client's own count."""
        self._raise_to("feedback_dropped", self.router_feedback_dropped, dropped)

    def sync_prefix_evictions(self, evicted: int) -> None:
        """Raise the evictions counter to the router table's own count (since start)."""
        self._raise_to("prefix_evictions", self.prefix_evictions, evicted)

    def _raise_to(self, key: str, counter: Counter, total: float) -> None:
        """Raise ``counter`` to ``total``, a count kept elsewhere since start (never lowers
        it). What it was raised to is kept here: prometheus_client's value is private."""
        behind = total - self._synced.get(key, 0.0)
        if behind > 0:
            counter.inc(behind)
            self._synced[key] = total

    def observe_tokens(self, prompt: int, cached: int, output: int) -> None:
        self.prompt_tokens.inc(prompt)
        self.cached_tokens.inc(cached)
        self.output_tokens.inc(output)
        self._prompt_total += prompt
        self._cached_total += cached
        if self._prompt_total:
            self.kv_hit_ratio.set(self._cached_total / self._prompt_total)


class _WorkerCounter:
    """A counter with a ``worker`` label that records which worker labels it created, so the
    sweep can end departed workers' series through prometheus_client's public API alone (its
    private fields may change in any release). The record is pruned by the same sweep."""

    def __init__(
        self, name: str, doc: str, labelnames: tuple[str, ...], registry: CollectorRegistry
    ) -> None:
        self._counter = Counter(name, doc, labelnames, registry=registry)
        self._workers: set[str] = set()

    def labels(self, **labels: str) -> Counter:
        """The series of these labels (created at its first use), recorded by its worker."""
        self._workers.add(labels["worker"])
        return self._counter.labels(**labels)

    def end(self, workers: set[str]) -> None:
        """End every series of these workers."""
        for label in workers & self._workers:
            self._counter.remove_by_labels({"worker": label})
        self._workers -= workers

    def worker_labels(self) -> set[str]:
        """The worker labels that may have series now."""
        return set(self._workers)


def _per_worker_gauge(name: str, doc: str, registry: CollectorRegistry) -> Gauge:
    return Gauge(name, doc, ["worker"], registry=registry)


def _remove_series(gauges: tuple[Gauge, ...], labels: set[str]) -> None:
    """End the series of workers no longer reported (bounded label sets)."""
    for label in labels:
        for g in gauges:
            try:
                g.remove(label)
            except KeyError:
                pass
