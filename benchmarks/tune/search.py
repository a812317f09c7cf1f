"""The Optuna search: a seeded TPE sampler, median pruning, worker processes on one SQLite
storage, and a progress bar.

Why processes: a trial is a CPU-bound Python replay, so threads would share one core. Each
process loads the study from the storage and runs its share of the trials; the storage is
what makes a search resume after Ctrl-C (trials left running by the interrupted run are
marked failed and run again). With ``jobs=1`` a run is reproducible trial by trial from the
seed; with more processes the trials each one sees depend on timing.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from benchmarks.tune.objective import Objective, constraints, lower_is_better
from benchmarks.tune.split import TuneInputError

N_STARTUP = 10  # random trials before TPE models the space (Optuna's default)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def storage_for(path: Path) -> optuna.storages.RDBStorage:
    """SQLite storage that waits for the other processes' writes instead of failing."""
    return optuna.storages.RDBStorage(
        f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 120}}
    )


def _sampler(seed: int) -> optuna.samplers.TPESampler:
    """Seeded multivariate TPE (several objectives: MOTPE); it reads the trials' SLO
    constraints (``Trial.set_constraint``) to prefer settings that meet them."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=N_STARTUP, multivariate=True)


def _pruner() -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=N_STARTUP, n_warmup_steps=1)


def open_study(
    storage_path: Path, name: str, objective: Objective, settings: dict[str, Any]
) -> optuna.Study:
    """Create the study, or load it to resume if the same settings created it."""
    directions = ["minimize" if lower_is_better(o) else "maximize" for o in objective.objectives]
    study = optuna.create_study(
        storage=storage_for(storage_path),
        study_name=name,
        directions=directions,
        sampler=_sampler(objective.seed),
        pruner=_pruner(),
        load_if_exists=True,
    )
    stored = study.user_attrs.get("settings")
    mine = json.loads(json.dumps(settings))
    if stored is None:
        study.set_user_attr("settings", mine)
    elif stored != mine:
        raise TuneInputError(
            f"--storage {storage_path}: study {name!r} was made with other settings; "
            "use another --name or --storage to start afresh"
        )
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # left running by an interrupted run: failed, and queued again with the same values
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, skip_if_exists=False)
    return study


def _work(storage_path: Path, name: str, objective: Objective, n: int, seed: int) -> None:
    """One worker process: load the study and run ``n`` trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=name,
        storage=storage_for(storage_path),
        sampler=_sampler(seed),
        pruner=_pruner(),
    )
    study.optimize(objective, n_trials=n)


def _done(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=DONE))


def run_search(
    storage_path: Path,
    name: str,
    objective: Objective,
    settings: dict[str, Any],
    trials: int,
    jobs: int,
    first: dict[str, Any],
) -> tuple[optuna.Study, float]:
    """Run the study to ``trials`` finished trials; ``first`` (the defaults) is trial 0.
    Returns the study and the wall time this call took."""
    t0 = time.perf_counter()
    study = open_study(storage_path, name, objective, settings)
    if not study.trials:
        study.enqueue_trial(first)
    left = trials - _done(study)
    if left <= 0:
        return study, time.perf_counter() - t0
    jobs = max(1, min(jobs, left))
    shares = [left // jobs + (1 if i < left % jobs else 0) for i in range(jobs)]
    bar = tqdm(total=trials, initial=trials - left, desc=f"tune {name}", unit="trial")
    try:
        if jobs == 1:
            optuna.logging.set_verbosity(optuna.logging.WARNING)

            def tick(_: optuna.Study, __: FrozenTrial) -> None:
                bar.update(1)

            study.optimize(objective, n_trials=left, callbacks=[tick])
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                futures = [
                    pool.submit(_work, storage_path, name, objective, n, objective.seed + 1 + i)
                    for i, n in enumerate(shares)
                ]
                while True:
                    finished, running = wait(futures, timeout=2.0)
                    bar.n = min(trials, _done(study))
                    bar.refresh()
                    for f in finished:
                        f.result()  # a failed worker stops the run with its error
                    if not running:
                        break
    finally:
        bar.close()
    return study, time.perf_counter() - t0


def feasible(t: FrozenTrial) -> bool:
    return all(c <= 0 for c in constraints(t))


def pareto(trials: Sequence[FrozenTrial], signs: Sequence[float]) -> list[FrozenTrial]:
    """Trials no other trial beats on every objective (``signs``: +1 minimise, -1 maximise)."""

    def key(t: FrozenTrial) -> list[float]:
        return [s * v for s, v in zip(signs, t.values, strict=True)]

    keys = [key(t) for t in trials]
    out = []
    for i, t in enumerate(trials):
        ki = keys[i]
        dominated = any(
            all(a <= b for a, b in zip(kj, ki, strict=True)) and kj != ki for kj in keys
        )
        if not dominated:
            out.append(t)
    return out


def best_trial(study: optuna.Study, objectives: Sequence[str]) -> FrozenTrial:
    """The tuned setting: among complete trials meeting every SLO (else the least violating),
    the Pareto front's best on the first objective."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {study.study_name!r} has no complete trial")
    pool = [t for t in complete if feasible(t)]
    if not pool:
        least = min(sum(max(0.0, c) for c in constraints(t)) for t in complete)
        pool = [t for t in complete if sum(max(0.0, c) for c in constraints(t)) == least]
    signs = [1.0 if lower_is_better(o) else -1.0 for o in objectives]
    front = pareto(pool, signs)
    return min(front, key=lambda t: (signs[0] * t.values[0], t.number))
