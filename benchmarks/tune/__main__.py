"""``python -m benchmarks.tune``: tune the router's settings to an SLO on a recorded trace.

    python -m benchmarks.tune --trace TRACE.jsonl --workers 8 --kv-blocks 16384 \\
        --slo ttft_p90_ms=800 --objective goodput --trials 60 --name my-fleet
    python -m benchmarks.tune --case agentic-8 --objective ttft_p90_ms --trials 60 --name agentic-8

The trace is any trace the replay reads: Mooncake JSONL, or an agentic trace (the converter's
output from processor traces: ``python -m benchmarks.replay.agentic convert``). ``--case``
takes the trace and cluster of a case of the replay suite instead. The first part of the
trace is tuned on, the held-back rest (``--holdout``) compares tuned and default settings of
our router and of Dynamo's KV router (its own knobs, the same trial budget). Results go to
benchmarks/results/tune/NAME/ (report.md, summary.json, akr.env, ...); the Optuna storage
(study.db there unless ``--storage``) lets an interrupted run resume with the same command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from benchmarks.replay.cluster import ClusterConfig
from benchmarks.replay.trace import TraceRequest
from benchmarks.tune import report
from benchmarks.tune.compare import heldout
from benchmarks.tune.objective import Objective, Slo, parse_objectives, parse_slo
from benchmarks.tune.search import best_trial, run_search
from benchmarks.tune.space import ROUTERS, Space, defaults_of, make_space
from benchmarks.tune.split import TuneInputError, load_trace, split_trace

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "tune"
CLUSTER_FLAGS = ("workers", "speeds", "kv_blocks", "speedup", "arrival_speedup")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", type=Path, help="mooncake or agentic trace file")
    src.add_argument("--case", help="a replay suite case, e.g. agentic-8 or mooncake-8")
    p.add_argument("--limit", type=int, default=None, help="first N requests of the trace")
    p.add_argument("--workers", type=int, default=None, help="workers (default 8)")
    p.add_argument("--speeds", default=None, help="per-worker relative speeds, comma list")
    p.add_argument("--kv-blocks", type=int, default=None, help="KV blocks per worker (16384)")
    p.add_argument("--block-size", type=int, default=64, help="KV block size in tokens")
    p.add_argument("--speedup", type=float, default=None, help="engine speedup ratio (1.0)")
    p.add_argument("--arrival-speedup", type=float, default=None, help="replay arrivals faster")
    p.add_argument("--slo", action="append", default=[], help="METRIC=MS, e.g. ttft_p90_ms=500")
    p.add_argument(
        "--objective",
        action="append",
        default=[],
        help="goodput or a latency figure; repeat for several objectives (a Pareto front)",
    )
    p.add_argument("--trials", type=int, default=60, help="trials per router")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=float, default=0.3, help="share of conversations held back")
    p.add_argument(
        "--eval-seeds", type=int, default=3, help="seeds per arm on the held-back part (mean)"
    )
    p.add_argument("--only", default=None, help="tune only these of our settings (comma list)")
    p.add_argument("--set", action="append", default=[], help="hold one of our settings: N=V")
    p.add_argument("--name", default=None, help="output directory name (default: trace name)")
    p.add_argument("--out-root", type=Path, default=RESULTS)
    p.add_argument("--storage", type=Path, default=None, help="SQLite file (default: in out)")
    return p


def _cluster(args: argparse.Namespace) -> ClusterConfig:
    speeds = None
    if args.speeds:
        try:
            speeds = [float(s) for s in args.speeds.split(",")]
        except ValueError:
            raise TuneInputError(
                f"--speeds {args.speeds!r}: expected numbers, comma separated"
            ) from None
    try:
        return ClusterConfig(
            num_workers=args.workers or 8,
            num_gpu_blocks=args.kv_blocks or 16384,
            block_size=args.block_size,
            speeds=speeds,
            speedup_ratio=args.speedup or 1.0,
            arrival_speedup_ratio=args.arrival_speedup or 1.0,
        )
    except ValueError as e:
        raise TuneInputError(f"cluster: {e}") from None


def _source(args: argparse.Namespace, work: Path) -> tuple[str, list[TraceRequest], ClusterConfig]:
    """(trace description, requests, cluster) from --trace + cluster flags, or --case."""
    if args.trace is not None:
        return str(args.trace), load_trace(args.trace, args.limit), _cluster(args)
    given = [f"--{f.replace('_', '-')}" for f in CLUSTER_FLAGS if getattr(args, f) is not None]
    if given:
        raise TuneInputError(f"--case sets the cluster; leave out {', '.join(given)}")
    from benchmarks.replay.suite import cases

    by_key = {c.key: c for c in cases()}
    case = by_key.get(args.case)
    if case is None:
        raise TuneInputError(f"--case {args.case}: unknown (one of {', '.join(by_key)})")
    trace = case.make_trace(work)
    requests = trace.requests if args.limit is None else load_trace(trace.path, args.limit)
    return f"replay suite case {case.key}", requests, case.cluster()


def _sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise TuneInputError(f"--set {item!r}: expected SETTING=VALUE")
        out[name.strip()] = value.strip()
    return out


def _describe(c: ClusterConfig) -> str:
    speeds = f", speeds {','.join(f'{s:g}' for s in c.speeds)}" if c.speeds else ""
    return (
        f"{c.num_workers} workers x {c.num_gpu_blocks} KV blocks of {c.block_size} tokens, "
        f"speedup {c.speedup_ratio:g}{speeds}, arrivals x{c.arrival_speedup_ratio:g}"
    )


def run(args: argparse.Namespace, argv: list[str]) -> int:
    t_start = time.perf_counter()
    slos = tuple(parse_slo(s) for s in args.slo)
    objectives = parse_objectives(args.objective, slos)
    if args.trials < 1:
        raise TuneInputError(f"--trials {args.trials}: must be >= 1")
    if args.eval_seeds < 1:
        raise TuneInputError(f"--eval-seeds {args.eval_seeds}: must be >= 1")
    spaces: dict[str, Space] = {
        "ours": make_space("ours", args.only.split(",") if args.only else None, _sets(args.set)),
        "kv": make_space("kv"),
    }
    with tempfile.TemporaryDirectory(prefix="akr-tune-") as tmp:
        label, requests, cluster = _source(args, Path(tmp))
    tune, held = split_trace(requests, args.holdout)
    name = args.name or (args.case or args.trace.stem)
    out = args.out_root / name
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or out / "study.db"
    command = "python -m benchmarks.tune " + shlex.join(argv)
    print(f"{label}: {len(requests)} requests; tuning on {len(tune)}, held back {len(held)}")

    studies, best, wall, firsts = {}, {}, {}, {}
    for router in ROUTERS:
        space = spaces[router]
        objective = Objective(space, tune, cluster, args.seed, tuple(objectives), slos)
        settings = {
            "router": router,
            "trace": label,
            "limit": args.limit,
            "holdout": args.holdout,
            "cluster": _describe(cluster),
            "slos": args.slo,
            "objectives": objectives,
            "ranges": space.ranges,
            "fixed": {k: str(v) for k, v in space.fixed.items()},
            "seed": args.seed,
        }
        first = firsts[router] = space.default_params(defaults_of(space, cluster, args.seed))
        studies[router], wall[router] = run_search(
            storage, router, objective, settings, args.trials, args.jobs, first
        )
        best[router] = best_trial(studies[router], objectives)

    t0 = time.perf_counter()
    tuned = {r: {**spaces[r].fixed, **spaces[r].settings(best[r].params)} for r in ROUTERS}
    arms = {
        "tuned_ours": ("ours", tuned["ours"]),
        "default_ours": ("ours", spaces["ours"].fixed),
        "tuned_kv": ("kv", tuned["kv"]),
        "default_kv": ("kv", spaces["kv"].fixed),
    }
    seeds = [args.seed + i for i in range(args.eval_seeds)]
    figs, per_seed = heldout(arms, held, cluster, seeds, slos, args.jobs)
    wall["heldout"] = time.perf_counter() - t0
    wall["total"] = time.perf_counter() - t_start
    details = _details(args, label, command, requests, tune, held, cluster, objectives, slos)
    details["wall_s"] = {k: round(v, 1) for k, v in wall.items()}
    details["eval_seeds"] = seeds
    details["heldout_by_seed"] = {
        arm: [round(f[objectives[0]], 4) for f in runs] for arm, runs in per_seed.items()
    }
    details["routers"] = {
        r: _router_details(spaces[r], studies[r], best[r], firsts[r], cluster, args.seed)
        for r in ROUTERS
    }
    report.write_all(out, details, figs, studies)
    print(report.comparison_table(figs, objectives[0]))
    print("\n".join(report.verdict(figs, objectives[0], details["heldout_by_seed"])))
    print(f"wrote {out} in {wall['total']:.0f} s")
    return 0


def _details(
    args: argparse.Namespace,
    label: str,
    command: str,
    requests: list[TraceRequest],
    tune: list[TraceRequest],
    held: list[TraceRequest],
    cluster: ClusterConfig,
    objectives: list[str],
    slos: tuple[Slo, ...],
) -> dict[str, Any]:
    sessions = any(r.session_id is not None or r.parent is not None for r in requests)
    return {
        "name": args.name or (args.case or args.trace.stem),
        "command": command,
        "trace": label,
        "split": f"conversations in arrival order, last {args.holdout:g} held back"
        if sessions
        else f"requests in arrival order, last {args.holdout:g} held back",
        "requests": {"all": len(requests), "tune": len(tune), "heldout": len(held)},
        "cluster": _describe(cluster),
        "slos": list(args.slo),
        "objectives": objectives,
        "trials": args.trials,
        "jobs": args.jobs,
        "seed": args.seed,
    }


def _router_details(
    space: Space, study: Any, best: Any, first: dict, cluster: ClusterConfig, seed: int
) -> dict:
    from optuna.trial import TrialState

    defaults = defaults_of(space, cluster, seed)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    trial0 = next((t for t in done if t.params == first), None)  # the defaults' trial
    return {
        "best_trial": best.number,
        "complete": len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
        "pruned": len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))),
        "tuned": space.settings(best.params),
        "default": {k: getattr(defaults, k) for k in space.ranges},
        "tune_best": best.user_attrs.get("figures", {}),
        "tune_default": trial0.user_attrs.get("figures", {}) if trial0 is not None else {},
        "importance": report.importances(study),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return run(args, argv)
    except TuneInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
