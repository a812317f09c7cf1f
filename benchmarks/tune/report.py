"""What a tuning run leaves in its directory.

* ``summary.json``: the objective, its direction and, per arm on the held-back part, the
  objective and TTFT p50/p90/p99 (exactly these keys: other tools read this file);
* ``details.json``: everything else (settings, tuning-part figures, importances, wall times);
* ``akr.env``: deploy/vllm/akr.env with the tuned router settings active;
* ``dynamo_kv.env``: the tuned knobs of Dynamo's KV router as its ``DYN_ROUTER_*`` variables;
* ``report.md`` with ``history.png``, ``importance.png`` and, with several objectives,
  ``pareto.png``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from benchmarks.tune.compare import ARMS
from benchmarks.tune.objective import lower_is_better
from benchmarks.tune.search import feasible, pareto
from deploy.vllm.envfile import render

SUMMARY_KEYS = ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms")
TABLE = (
    ("TTFT p50", "ttft_p50_ms"),
    ("p90", "ttft_p90_ms"),
    ("p99", "ttft_p99_ms"),
    ("ITL p99", "itl_p99_ms"),
    ("E2E p99", "e2e_p99_ms"),
    ("goodput /s", "goodput"),
    ("in SLO", "goodput_frac"),
    ("reuse", "reuse"),
)
# Dynamo's environment variables for the KV knobs (dynamo/common/configuration/groups/
# kv_router_args.py in the 1.6.1 wheel).
DYN_ENV = {
    "overlap_score_credit": "DYN_ROUTER_KV_OVERLAP_SCORE_CREDIT",
    "prefill_load_scale": "DYN_ROUTER_PREFILL_LOAD_SCALE",
    "router_temperature": "DYN_ROUTER_TEMPERATURE",
    "router_queue_threshold": "DYN_ROUTER_QUEUE_THRESHOLD",
}


def summary(objective: str, heldout: dict[str, dict]) -> dict[str, Any]:
    """The interface shape: ``{objective, lower_is_better, heldout: {arm: {objective, ...}}}``."""
    return {
        "objective": objective,
        "lower_is_better": lower_is_better(objective),
        "heldout": {
            arm: {
                "objective": heldout[arm][objective],
                **{k: heldout[arm][k] for k in SUMMARY_KEYS},
            }
            for arm in ARMS
        },
    }


def env_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_env_files(
    out: Path, tuned_ours: dict[str, Any], tuned_kv: dict[str, Any], note: str
) -> None:
    ours = {f"AKR_ROUTER_{k.upper()}": env_value(v) for k, v in tuned_ours.items() if v is not None}
    (out / "akr.env").write_text(render(ours, header=[note]))
    lines = [
        "# Dynamo's KV router (python -m dynamo.frontend --router-mode kv) with the knobs tuned",
        f"# on the same trace and budget. {note}",
    ]
    for k, v in tuned_kv.items():
        var = DYN_ENV.get(k)
        if var is None:
            continue
        lines.append(f"# {var}=  (unset)" if v is None else f"{var}={env_value(v)}")
    (out / "dynamo_kv.env").write_text("\n".join(lines) + "\n")


def _fmt(key: str, v: float) -> str:
    if key.endswith("_ms"):
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    if key in ("goodput_frac", "reuse"):
        return f"{v:.3f}"
    return f"{v:.2f}"


def comparison_table(figs: dict[str, dict], objective: str) -> str:
    cols = [("objective", objective), *TABLE]
    lines = [
        "| arm | " + " | ".join(c[0] for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for arm in ARMS:
        f = figs[arm]
        lines.append(f"| {arm} | " + " | ".join(_fmt(k, f[k]) for _, k in cols) + " |")
    return "\n".join(lines)


def verdict(
    figs: dict[str, dict], objective: str, by_seed: dict[str, list[float]] | None = None
) -> list[str]:
    """Sentences saying whether tuned ours beat default ours and tuned kv on the objective
    (the mean over seeds, and on how many seeds)."""
    sign = 1.0 if lower_is_better(objective) else -1.0
    ours = figs["tuned_ours"][objective]
    out = []
    for other in ("default_ours", "tuned_kv", "default_kv"):
        v = figs[other][objective]
        better = sign * ours < sign * v
        ratio = ours / v if v else math.nan
        word = "beats" if better else ("ties" if ours == v else "does NOT beat")
        line = (
            f"tuned_ours {word} {other} on {objective}: {_fmt(objective, ours)} vs "
            f"{_fmt(objective, v)} ({ratio:.3f}x)"
        )
        if by_seed:
            pairs = list(zip(by_seed["tuned_ours"], by_seed[other], strict=True))
            wins = sum(sign * a < sign * b for a, b in pairs)
            line += f", better on {wins} of {len(pairs)} seeds"
        out.append(line)
    return out


def importances(study: optuna.Study) -> dict[str, float]:
    """PED-ANOVA importances of the first objective (needs no scikit-learn, unlike fANOVA):
    which settings the best trials have in common. Empty when too few trials."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 4:
        return {}
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns that it ranks low targets: we sign them
            return optuna.importance.get_param_importances(
                study,
                evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                target=lambda t: sign * t.values[0],
            )
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def plot(out: Path, studies: dict[str, optuna.Study], objectives: list[str]) -> list[str]:
    """history.png, importance.png and (several objectives) pareto.png; returns the names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = objectives[0]
    sign = 1.0 if lower_is_better(obj) else -1.0
    fig, axes = plt.subplots(1, len(studies), figsize=(6 * len(studies), 4), squeeze=False)
    for ax, (router, study) in zip(axes[0], studies.items(), strict=True):
        xs, ys, px, py = [], [], [], []
        for t in study.trials:
            if t.state == TrialState.COMPLETE:
                xs.append(t.number)
                ys.append(t.values[0])
            elif t.state == TrialState.PRUNED and t.intermediate_values:
                px.append(t.number)
                py.append(t.intermediate_values[max(t.intermediate_values)])
        ax.scatter(xs, ys, s=14, label="complete")
        if px:
            ax.scatter(px, py, s=14, marker="x", color="grey", label="pruned (last checkpoint)")
        best, run = [], math.inf
        for y in ys:
            run = min(run, sign * y)
            best.append(sign * run)
        ax.step(xs, best, where="post", color="C3", label="best so far")
        ax.set_title(f"{router}: {obj} per trial (tuning part)")
        ax.set_xlabel("trial")
        ax.set_ylabel(obj)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=100)
    plt.close(fig)
    names = ["history.png"]

    fig, axes = plt.subplots(1, len(studies), figsize=(6 * len(studies), 3.5), squeeze=False)
    for ax, (router, study) in zip(axes[0], studies.items(), strict=True):
        imp = importances(study)
        keys = list(imp)[::-1]
        ax.barh(keys, [imp[k] for k in keys])
        ax.set_title(f"{router}: parameter importance (PED-ANOVA)")
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(out / "importance.png", dpi=100)
    plt.close(fig)
    names.append("importance.png")

    if len(objectives) > 1:
        signs = [1.0 if lower_is_better(o) else -1.0 for o in objectives]
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for i, (router, study) in enumerate(studies.items()):
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            ax.scatter(
                [t.values[0] for t in done],
                [t.values[1] for t in done],
                s=10,
                color=f"C{i}",
                alpha=0.35,
                label=f"{router} trials",
            )
            front = sorted(
                pareto([t for t in done if feasible(t)], signs), key=lambda t: t.values[0]
            )
            ax.plot(
                [t.values[0] for t in front],
                [t.values[1] for t in front],
                "o-",
                color=f"C{i}",
                label=f"{router} Pareto front (feasible)",
            )
        ax.set_xlabel(objectives[0])
        ax.set_ylabel(objectives[1])
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "pareto.png", dpi=100)
        plt.close(fig)
        names.append("pareto.png")
    return names


def _default_value(fig: dict, obj: str) -> str:
    return _fmt(obj, fig[obj]) if obj in fig else "not run to the end"


def markdown(details: dict[str, Any], figs: dict[str, dict], pngs: list[str]) -> str:
    obj = details["objectives"][0]
    lines = [
        f"# Tuning run `{details['name']}`",
        "",
        f"`{details['command']}`",
        "",
        f"- trace: {details['trace']} ({details['requests']['all']} requests); tuned on the "
        f"first {details['requests']['tune']} ({details['split']}), compared on the held-back "
        f"{details['requests']['heldout']}",
        f"- cluster: {details['cluster']}",
        f"- SLOs: {', '.join(details['slos']) or 'none'}; objective(s): "
        f"{', '.join(details['objectives'])} "
        f"({'lower' if lower_is_better(obj) else 'higher'} is better)",
        f"- budget: {details['trials']} trials per router, {details['jobs']} processes, seed "
        f"{details['seed']}; wall time {details['wall_s']['total']:.0f} s "
        f"(ours {details['wall_s']['ours']:.0f} s, kv {details['wall_s']['kv']:.0f} s, "
        f"held-back comparison {details['wall_s']['heldout']:.0f} s)",
        "",
        "## Held-back part",
        "",
        f"Mean over seeds {', '.join(map(str, details['eval_seeds']))}; {obj} per seed: "
        + "; ".join(
            f"{arm} {' / '.join(_fmt(obj, v) for v in vals)}"
            for arm, vals in details["heldout_by_seed"].items()
        )
        + ".",
        "",
        comparison_table(figs, obj),
        "",
        *(f"- {v}" for v in verdict(figs, obj, details["heldout_by_seed"])),
        "",
        "## Tuned settings",
        "",
    ]
    for router in ("ours", "kv"):
        r = details["routers"][router]
        lines += [
            f"### {router}",
            "",
            f"best trial #{r['best_trial']} ({r['complete']} complete, {r['pruned']} pruned); "
            f"on the tuning part {obj} {_fmt(obj, r['tune_best'][obj])} "
            f"(defaults: {_default_value(r['tune_default'], obj)})",
            "",
            "| setting | tuned | default | importance |",
            "|---|---|---|---|",
        ]
        for k, v in r["tuned"].items():
            imp = r["importance"].get(k)
            lines.append(
                f"| {k} | {env_value(v)} | {env_value(r['default'][k])} | "
                f"{'' if imp is None else f'{imp:.2f}'} |"
            )
        lines.append("")
    lines += ["## Plots", "", *(f"![{p}]({p})" for p in pngs), ""]
    if details.get("notes"):
        lines += ["## Notes", "", *(f"- {n}" for n in details["notes"]), ""]
    return "\n".join(lines)


def write_all(
    out: Path, details: dict[str, Any], figs: dict[str, dict], studies: dict[str, optuna.Study]
) -> None:
    obj = details["objectives"][0]
    (out / "summary.json").write_text(json.dumps(summary(obj, figs), indent=1) + "\n")
    details = {**details, "heldout": figs}
    (out / "details.json").write_text(json.dumps(details, indent=1, default=str) + "\n")
    note = f"tuned by {details['command']}"
    write_env_files(
        out, details["routers"]["ours"]["tuned"], details["routers"]["kv"]["tuned"], note
    )
    pngs = plot(out, studies, details["objectives"])
    (out / "report.md").write_text(markdown(details, figs, pngs))
