"""SLOs, the objective, and one trial: a replay of the tuning part with the trial's settings.

An SLO ``ttft_p90_ms=500`` bounds a percentile of the replay's figures; trials that break one
are infeasible (Optuna's constraints, so the sampler learns the boundary). Goodput at the SLO
counts requests within every stated latency family's bound (the loosest bound when a family
has several, e.g. ``ttft_p50_ms`` and ``ttft_p99_ms``) per second of offered traffic (first
to last arrival): the replay serves every request, so what a router changes is how many
make it in time, not how many are served. Any other
objective is one of the replay's latency figures, lower is better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from benchmarks.replay.cluster import ClusterConfig, run_replay
from benchmarks.replay.dynamo_kv import KvPortPolicy
from benchmarks.replay.metrics import summarize
from benchmarks.replay.ours import OursPolicy
from benchmarks.replay.records import RequestRecord
from benchmarks.replay.trace import TraceRequest
from benchmarks.tune.space import Space, kv_knobs, ours_config
from benchmarks.tune.split import TuneInputError

LATENCY = (
    "ttft_mean_ms",
    "ttft_p50_ms",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
)
GOODPUT = "goodput"
KEPT = (*LATENCY, GOODPUT, "goodput_frac", "reuse", "requests", "span_s")


@dataclass(frozen=True)
class Slo:
    """One bound: ``metric`` (a latency figure) at most ``limit_ms``."""

    metric: str
    limit_ms: float

    @property
    def family(self) -> str:
        return self.metric.split("_", 1)[0]


def parse_slo(text: str) -> Slo:
    """``ttft_p90_ms=500`` -> Slo; anything else is a ``TuneInputError`` saying why."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep:
        raise TuneInputError(f"--slo {text!r}: expected METRIC=MILLISECONDS, e.g. ttft_p90_ms=500")
    if name not in LATENCY:
        raise TuneInputError(
            f"--slo {text!r}: unknown metric {name!r} (one of {', '.join(LATENCY)})"
        )
    try:
        limit = float(raw)
    except ValueError:
        raise TuneInputError(f"--slo {text!r}: {raw.strip()!r} is not a number") from None
    if not math.isfinite(limit) or limit <= 0:
        raise TuneInputError(f"--slo {text!r}: the bound must be a number > 0")
    return Slo(name, limit)


def parse_objectives(names: Sequence[str], slos: Sequence[Slo]) -> list[str]:
    """The objectives asked for (default: goodput with SLOs, TTFT p90 without)."""
    out = list(names) or [GOODPUT if slos else "ttft_p90_ms"]
    for name in out:
        if name not in (GOODPUT, *LATENCY):
            raise TuneInputError(
                f"--objective {name!r}: unknown (goodput, or one of {', '.join(LATENCY)})"
            )
        if name == GOODPUT and not slos:
            raise TuneInputError("--objective goodput: needs at least one --slo to count against")
    if len(set(out)) != len(out):
        raise TuneInputError(f"--objective: {', '.join(out)} names one objective twice")
    return out


def lower_is_better(objective: str) -> bool:
    return objective != GOODPUT


def figures(records: Sequence[RequestRecord], workers: int, slos: Sequence[Slo]) -> dict:
    """The replay's figures, with goodput counted against the SLOs."""
    fig = summarize(records, workers, slo_ttft_ms=float("inf"))
    bound: dict[str, float] = {}
    for s in slos:
        bound[s.family] = max(bound.get(s.family, 0.0), s.limit_ms)
    inf = float("inf")
    ttft = np.fromiter((r.ttft_ms for r in records), float, len(records))
    itl = np.fromiter((inf if r.itl_ms is None else r.itl_ms for r in records), float)
    itl[np.isinf(itl)] = 0.0  # a one-token answer has no inter-token latency to miss
    e2e = np.fromiter((r.e2e_ms for r in records), float, len(records))
    good = (
        (ttft <= bound.get("ttft", inf))
        & (itl <= bound.get("itl", inf))
        & (e2e <= bound.get("e2e", inf))
    )
    n_good = int(np.count_nonzero(good))
    arrivals = [r.arrival_ms for r in records]
    offered_s = (max(arrivals) - min(arrivals)) / 1000.0 if len(records) > 1 else 0.0
    fig[GOODPUT] = n_good / max(offered_s, 1e-3) if records else 0.0
    fig["goodput_frac"] = n_good / max(len(records), 1)
    return {k: fig[k] for k in KEPT}


def violations(fig: dict, slos: Sequence[Slo]) -> list[float]:
    """Per SLO, how far the figure is over its bound (<= 0: met), relative to the bound."""
    return [(fig[s.metric] - s.limit_ms) / s.limit_ms for s in slos]


def constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    """The SLO violations a trial recorded (feasible if all <= 0); the sampler reads them too."""
    return list(trial.constraints.values())


def _record_violations(trial: optuna.Trial, fig: dict, slos: Sequence[Slo]) -> None:
    for s, v in zip(slos, violations(fig, slos), strict=True):
        trial.set_constraint(s.metric, v)


def replay(
    router: str,
    values: dict[str, Any],
    trace: list[TraceRequest],
    cluster: ClusterConfig,
    seed: int,
    on_checkpoint: Callable[[int, list[RequestRecord]], None] | None = None,
) -> list[RequestRecord]:
    """One replay of ``trace`` with ``router`` set to ``values`` (defaults elsewhere)."""
    if router == "ours":
        policy: Any = OursPolicy(ours_config(cluster, seed, values), cluster.block_size)
    else:
        policy = KvPortPolicy(seed=seed, knobs=kv_knobs(values))
    return run_replay(trace, cluster, policy, on_checkpoint=on_checkpoint)


@dataclass(frozen=True)
class Objective:
    """The function Optuna calls per trial (picklable, so worker processes rebuild it)."""

    space: Space
    trace: list[TraceRequest]
    cluster: ClusterConfig
    seed: int
    objectives: tuple[str, ...]
    slos: tuple[Slo, ...]

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        values = {**self.space.fixed, **self.space.suggest(trial)}
        prune = len(self.objectives) == 1  # Optuna prunes single-objective studies only

        def checkpoint(step: int, done: list[RequestRecord]) -> None:
            if not prune or not done:
                return
            fig = figures(done, self.cluster.num_workers, self.slos)
            trial.report(fig[self.objectives[0]], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"at checkpoint {step}")

        records = replay(self.space.router, values, self.trace, self.cluster, self.seed, checkpoint)
        fig = figures(records, self.cluster.num_workers, self.slos)
        trial.set_user_attr("figures", fig)
        _record_violations(trial, fig, self.slos)
        out = tuple(fig[o] for o in self.objectives)
        return out[0] if len(out) == 1 else out
