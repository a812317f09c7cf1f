"""Routing quality against Dynamo's own routers, side by side on one simulated cluster.

    python -m benchmarks.routing --short            # `make bench`: < 10 minutes here
    python -m benchmarks.routing --full             # the committed run
    python -m benchmarks.routing --short --workloads agentic --arms ours,dynamo_kv --repeats 2
    python -m benchmarks.routing --full --workloads agentic_pressure --arms ours,dynamo_kv \
        --seeds 1,2,3 --name routing_pressure   # one repeat per seed, each reported

For every workload the harness brings up, for each arm in turn, a fresh identical cluster of
simulated workers (``python -m dynamo.mocker`` through ``deploy.local_stack``: same worker count,
same speeds, same KV capacity ``gpu_blocks``, 64-token blocks, cold caches) and drives the
identical seeded workload through it:

* ``ours``               gateway -> stock frontend -> our processor + router -> workers; NAT
                         hints in the body (``nvext.agent_hints`` + ``nvext.cache_control``);
* ``dynamo_kv``          stock frontend ``--router-mode kv``;
* ``dynamo_kv_affinity`` the same plus ``--router-session-affinity-ttl-secs 60`` and the
                         session id in header ``x-dynamo-session-id``;
* ``round_robin``, ``random``: stock frontend in those modes.

The stock arms get the hints they accept (``osl``, ``latency_sensitivity``, ``priority``);
``prefix_id``/``total_requests``/``iat`` and ``cache_control`` are stripped (the stock frontend
400s on them). Our processor is told the workers' KV capacity
(``AKR_ROUTER_WORKER_CAPACITY_BLOCKS`` = ``gpu_blocks``), as an operator would configure it.

Load generators. AIPerf (PyPI ``aiperf``, the load generator of Dynamo's router A/B guide)
replays the Mooncake trace (``--custom-dataset-type mooncake_trace --fixed-schedule``), so
those figures are produced the way published ones are (see ``benchmarks/aiperf_runner.py``
for its set-up here). The four agentic workloads use our driver (``benchmarks/driver.py``)
because AIPerf cannot express them: its per-request ``extra`` is fixed per trace line, but the
agent hints change per request and per session (``total_requests``, ``iat``, ``osl``,
``cache_control`` TTL), the next turn must leave a drawn tool-call gap AFTER the previous
answer finished (AIPerf's fixed schedule is open loop, its multi-turn mode has one global
delay distribution), and the affinity arm needs our session id in ``x-dynamo-session-id``.
Both measure TTFT client-side as the time to the first non-empty content chunk of the SSE
stream and take token counts from the streamed usage. If ``.venv/aiperf`` is missing the
Mooncake replay falls back to our driver and the results say so (``meta.mooncake_driver``).

Figures per arm (``benchmarks/results/routing.json``): TTFT p50/p90/p99, ITL p50/p99 (per
request (e2e - ttft)/(output tokens - 1)), E2E p50/p99, output tokens/s (all output tokens /
wall time of the run), failed requests, KV hit ratio (sum cached / sum prompt tokens from the
usage), ideal hit ratio (``benchmarks/workloads.py``), load imbalance (max / mean requests per
worker; ours from the processor trace, exact; stock arms from polling the frontend's
per-worker "last request" gauges, a lower-bound count whose coverage is in ``meta``).
Percentiles pool the requests of all repeats; ``meta.spread`` has the per-repeat values.
With ``--seeds`` each repeat runs the workload of its own seed and ``meta.per_seed`` (and a
table in the markdown) reports every seed's figures and ratios, with the machine's CPU load
during each arm (``/proc/stat`` busy fraction over the arm, load averages at its ends).
All figures come from simulated workers on a 2-core machine: compare arms as ratios within
one run, never to GPU numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import aiperf_runner, tail
from benchmarks.driver import Driver, LoadSampler, Record, WorkerCountPoller, records_as_dicts
from benchmarks.workloads import WORKLOADS, Workload, build, mooncake_ideal_per_row
from deploy.local_stack import LocalStack, StackConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
ARMS = ("ours", "dynamo_kv", "dynamo_kv_affinity", "round_robin", "random")
BASELINE = "dynamo_kv"
AFFINITY_TTL_S = 60
OURS_ENV: dict[str, str] = {}  # --ours-env KEY=VALUE: experiments with router settings
TRACES_DIR: Path | None = None  # --traces-dir: keep our processor's traces for analysis
MACHINE = "simulated workers (dynamo.mocker) on a 2-core machine"
KEYS = (
    "ttft_p50_ms",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "output_tok_s",
    "failed",
    "kv_hit_ratio",
    "ideal_hit_ratio",
    "imbalance",
)


def stack_config(arm: str, wl: Workload) -> StackConfig:
    base: dict[str, Any] = dict(
        workers=len(wl.speeds), speeds=list(wl.speeds), gpu_blocks=wl.gpu_blocks, block_size=64
    )
    if arm == "ours":
        return StackConfig(
            arm="ours",
            processor_env={"AKR_ROUTER_WORKER_CAPACITY_BLOCKS": str(wl.gpu_blocks), **OURS_ENV},
            **base,
        )
    if arm == "dynamo_kv":
        return StackConfig(arm="kv", **base)
    if arm == "dynamo_kv_affinity":
        return StackConfig(
            arm="kv",
            frontend_args=["--router-session-affinity-ttl-secs", str(AFFINITY_TTL_S)],
            **base,
        )
    if arm == "round_robin":
        return StackConfig(arm="round-robin", **base)
    if arm == "random":
        return StackConfig(arm="random", **base)
    raise ValueError(arm)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def compact_record(d: dict[str, Any]) -> dict[str, Any]:
    """A record as committed: times to the microsecond, without the answer id (it only joins
    to processor traces, which are not committed), so a full run's file stays under 1 MB."""
    return {
        k: round(v, 3) if isinstance(v, float) else v for k, v in d.items() if k != "request_id"
    }


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    with gzip.open(path, "wt") as f:
        for d in records:
            f.write(json.dumps(compact_record(d), separators=(",", ":")) + "\n")


def summarize(records: list[Record], wall_s: float, ideal: float, imbalance: float | None) -> dict:
    ok = [r for r in records if r.ok]
    ttft = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    itl = [r.itl_ms for r in ok if r.itl_ms is not None]
    e2e = [r.e2e_ms for r in ok if r.e2e_ms is not None]
    prompt = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens for r in ok)
    return {
        "ttft_p50_ms": _pct(ttft, 50),
        "ttft_p90_ms": _pct(ttft, 90),
        "ttft_p99_ms": _pct(ttft, 99),
        "itl_p50_ms": _pct(itl, 50),
        "itl_p99_ms": _pct(itl, 99),
        "e2e_p50_ms": _pct(e2e, 50),
        "e2e_p99_ms": _pct(e2e, 99),
        "output_tok_s": round(sum(r.output_tokens for r in ok) / wall_s, 1) if wall_s > 0 else None,
        "failed": len(records) - len(ok),
        "kv_hit_ratio": round(cached / prompt, 4) if prompt else None,
        "ideal_hit_ratio": round(ideal, 4),
        "imbalance": round(imbalance, 3) if imbalance is not None else None,
    }


def pooled_ideal(wls: list[Workload]) -> float:
    """Ideal hit ratio of several workloads' requests together (each run once per arm)."""
    prompt = sum(t.prompt_tokens for w in wls for s in w.sessions for t in s.turns)
    ideal = sum(t.ideal_cached_tokens for w in wls for s in w.sessions for t in s.turns)
    return ideal / prompt if prompt else 0.0


def imbalance_of(counts: list[int]) -> float | None:
    if not counts or sum(counts) == 0:
        return None
    return max(counts) / (sum(counts) / len(counts))


def per_worker_counts(worker_ids: Iterable[int], workers: int) -> list[int]:
    """Requests per worker, busiest first, with zeros for workers that got none."""
    per_worker = Counter(worker_ids)
    return sorted(per_worker.values(), reverse=True) + [0] * max(0, workers - len(per_worker))


def our_trace_stats(stack: LocalStack, since_wall: float, workers: int) -> dict[str, Any]:
    from processor.traces import poll_records

    def ours(records: list[Any]) -> list[Any]:
        return [r for r in records if r.ts >= since_wall]

    poll_records(stack.trace_path, lambda recs: bool(ours(recs)), 10.0, interval_s=0.2)
    time.sleep(1.0)  # let the async writer flush the tail
    recs = ours(poll_records(stack.trace_path, lambda recs: bool(ours(recs)), 1.0))
    counts = per_worker_counts((r.worker_id for r in recs if r.worker_id is not None), workers)
    return {
        "trace_records": len(recs),
        "requests_per_worker": counts,
        "reasons": dict(Counter(r.reason for r in recs)),
        "retries": sum(r.retries for r in recs),
        "errors": sum(1 for r in recs if r.error),
        "imbalance": imbalance_of(counts),
    }


async def _drive(
    stack: LocalStack, arm: str, wl: Workload, repeat: int, run_dir: Path, use_aiperf: bool
) -> dict[str, Any]:
    sampler = LoadSampler()
    poller = None if arm == "ours" else WorkerCountPoller(f"{stack.frontend_url}/metrics")
    sampler.start()
    if poller:
        poller.start()
    since_wall = time.time()
    out: dict[str, Any] = {}
    if wl.name == "mooncake" and use_aiperf:
        rows = wl.scaling["rows"]
        records, wall, cmd = await asyncio.to_thread(
            aiperf_runner.run,
            stack.url,
            stack.model_name,
            arm,
            rows,
            mooncake_ideal_per_row(rows),
            run_dir,
            repeat,
        )
        # AIPerf's wall time includes its own start-up; throughput uses the request span.
        span = max((r.t_send_s + (r.e2e_ms or 0) / 1000 for r in records if r.ok), default=0.0)
        out.update(records=records, wall_s=span, aiperf_command=cmd, aiperf_wall_s=round(wall, 1))
    else:
        driver = Driver(
            stack.url,
            stack.model_name,
            arm,
            wl,
            repeat,
            session_header=(arm == "dynamo_kv_affinity"),
        )
        wall = await driver.run()
        out.update(records=driver.records, wall_s=wall)
    out["load"] = await sampler.stop()
    if poller:
        counts = await poller.stop()
        vals = sorted(counts.values(), reverse=True)
        vals += [0] * max(0, len(wl.speeds) - len(vals))
        out["requests_per_worker"] = vals
        out["poll_coverage"] = round(sum(vals) / max(1, len(out["records"])), 3)
        out["imbalance"] = imbalance_of(vals)
    else:
        stats = await asyncio.to_thread(our_trace_stats, stack, since_wall - 1, len(wl.speeds))
        out.update(stats)
        await asyncio.to_thread(keep_trace, stack.trace_path, f"{wl.name}-ours-{repeat}.jsonl")
    return out


def keep_trace(trace: Path, name: str) -> None:
    """Copy a run's trace into ``--traces-dir`` (when given) under ``name``."""
    if TRACES_DIR is not None and trace.exists():
        TRACES_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(trace, TRACES_DIR / name)


def code_state() -> dict[str, Any]:
    """The commit checked out and any uncommitted change under the stack's code, right now:
    the working tree may be shared, and each arm runs whatever is on disk when it starts."""
    import subprocess

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20
            ).stdout.rstrip()  # porcelain lines start with a space
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "router", "processor", "frontend", "deploy")
    return {
        "head": git("rev-parse", "--short", "HEAD"),
        "uncommitted": [line[3:] for line in dirty.splitlines()],
    }


def run_arm(arm: str, wl: Workload, repeat: int, run_dir: Path, use_aiperf: bool) -> dict[str, Any]:
    cfg = stack_config(arm, wl)
    code = code_state()
    t0 = time.monotonic()
    with LocalStack(cfg) as stack:
        up = time.monotonic() - t0
        result = asyncio.run(_drive(stack, arm, wl, repeat, run_dir, use_aiperf))
    result["stack_up_s"] = round(up, 1)
    result["code"] = code
    return result


def fmt_ratio(value: float | None, base: float | None) -> str:
    if value is None:
        return "-"
    if base in (None, 0):
        return f"{value:g}"
    return f"{value:g} ({value / base:.2f}x)"


TARGETS = [
    # (workload, key, comparison to dynamo_kv, bound, description)
    ("agentic", "ttft_p50_ms", "ratio_le", 0.7, "agentic TTFT p50 <= 0.7x kv"),
    ("agentic", "ttft_p99_ms", "ratio_le", 0.9, "agentic TTFT p99 <= 0.9x kv"),
    ("heterogeneous", "ttft_p90_ms", "ratio_le", 0.7, "heterogeneous TTFT p90 <= 0.7x kv"),
    ("mooncake", "ttft_p90_ms", "ratio_le", 1.05, "Mooncake TTFT p90 <= 1.05x kv"),
    ("agentic_pressure", "ttft_p99_ms", "ratio_le", 0.9, "agentic_pressure TTFT p99 <= 0.9x kv"),
]
PER_SEED_P99_BOUND = 1.1  # the "never above 1.1x of kv in any seed"
RATIO_KEYS = ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms")


def per_seed_rows(
    seeds: list[int], per_repeat: dict[str, list[dict]], extra: dict[str, list[dict]]
) -> list[dict[str, Any]]:
    """One row per seed: each arm's figures and load, and ours / kv ratios."""
    rows = []
    for i, seed in enumerate(seeds):
        row: dict[str, Any] = {"seed": seed, "arms": {}}
        for arm, reps in per_repeat.items():
            if i < len(reps):
                load = extra[arm][i].get("load", {}) if i < len(extra[arm]) else {}
                row["arms"][arm] = {**reps[i], "load": load}
        ours, base = row["arms"].get("ours"), row["arms"].get(BASELINE)
        if ours and base:
            row["ratios"] = {
                k: round(ours[k] / base[k], 3) if ours[k] and base[k] else None
                for k in (*RATIO_KEYS, "kv_hit_ratio")
            }
        rows.append(row)
    return rows


def per_seed_targets(wl: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        r = row.get("ratios")
        if not r:
            continue
        out.append(
            {
                "target": f"{wl} seed {row['seed']}: TTFT p99 <= {PER_SEED_P99_BOUND}x kv",
                "ours": row["arms"]["ours"]["ttft_p99_ms"],
                "dynamo_kv": row["arms"][BASELINE]["ttft_p99_ms"],
                "ratio": r["ttft_p99_ms"],
                "met": r["ttft_p99_ms"] is not None and r["ttft_p99_ms"] <= PER_SEED_P99_BOUND,
            }
        )
    return out


def per_seed_markdown(wl: str, rows: list[dict[str, Any]]) -> list[str]:
    def load_cell(m: dict[str, Any]) -> str:
        ld = m.get("load") or {}
        busy = ld.get("cpu_busy_arm")
        a, b = ld.get("loadavg_start"), ld.get("loadavg_end")
        la = f"{a[0]:.2f} -> {b[0]:.2f}" if a and b else "-"
        return f"{busy:.2f} / {la}" if busy is not None else la

    lines = [
        f"### {wl}: per seed",
        "",
        "Ratios are ours / `dynamo_kv` of the same seed. CPU: the machine's `/proc/stat` busy "
        "fraction over the arm (2 cores; 1.00 = both saturated) / its 1-minute load average "
        "at the arm's start -> end.",
        "",
        "| seed | arm | TTFT p50 | TTFT p90 | TTFT p99 | KV hit | failed | CPU busy / load1 |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        for arm, m in row["arms"].items():
            lines.append(
                f"| {row['seed']} | {arm} | {m['ttft_p50_ms']} | {m['ttft_p90_ms']} | "
                f"{m['ttft_p99_ms']} | {m['kv_hit_ratio']} | {m['failed']} | {load_cell(m)} |"
            )
        r = row.get("ratios")
        if r:
            lines.append(
                f"| {row['seed']} | **ours / kv** | {r['ttft_p50_ms']}x | {r['ttft_p90_ms']}x | "
                f"**{r['ttft_p99_ms']}x** | {r['kv_hit_ratio']}x | | |"
            )
    lines.append("")
    return lines


def check_targets(results: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    out = []
    for wl, key, _, bound, desc in TARGETS:
        if wl not in results or "ours" not in results[wl] or BASELINE not in results[wl]:
            continue
        ours, base = results[wl]["ours"].get(key), results[wl][BASELINE].get(key)
        ratio = ours / base if ours is not None and base else None
        out.append(
            {
                "target": desc,
                "ours": ours,
                "dynamo_kv": base,
                "ratio": round(ratio, 3) if ratio is not None else None,
                "met": ratio is not None and ratio <= bound,
            }
        )
    for wl, arms in results.items():
        if "ours" not in arms or BASELINE not in arms:
            continue
        o, b = arms["ours"]["kv_hit_ratio"], arms[BASELINE]["kv_hit_ratio"]
        out.append(
            {
                "target": f"{wl} KV hit ratio >= kv's",
                "ours": o,
                "dynamo_kv": b,
                "ratio": round(o / b, 3) if o and b else None,
                "met": o is not None and b is not None and o >= b,
            }
        )
        out.append(
            {
                "target": f"{wl} zero failed requests (ours)",
                "ours": arms["ours"]["failed"],
                "dynamo_kv": arms[BASELINE]["failed"],
                "ratio": None,
                "met": arms["ours"]["failed"] == 0,
            }
        )
    if "agentic" in results and "ours" in results["agentic"]:
        o = results["agentic"]["ours"]
        frac = (
            o["kv_hit_ratio"] / o["ideal_hit_ratio"]
            if o["kv_hit_ratio"] and o["ideal_hit_ratio"]
            else None
        )
        out.append(
            {
                "target": "agentic KV hit ratio >= 90% of ideal",
                "ours": o["kv_hit_ratio"],
                "dynamo_kv": o["ideal_hit_ratio"],
                "ratio": round(frac, 3) if frac else None,
                "met": frac is not None and frac >= 0.9,
            }
        )
    return out


def write_markdown(
    path: Path,
    results: dict,
    meta: dict,
    targets: list[dict],
    tail_table: str | None = None,
    title: str = "",
) -> None:
    lines = [
        "# Routing benchmark: ours vs Dynamo's routers" + (f" ({title})" if title else ""),
        "",
        f"Machine: {MACHINE}. Command: `{meta['command']}` ({meta['mode']} run, "
        f"{meta['repeats']} repeat(s), {meta['started']}). Ratios in parentheses are to "
        f"`{BASELINE}` in the same run (< 1 is better for latencies, > 1 for throughput and "
        "hit ratio). Times in ms. All figures are from simulated workers, not GPUs.",
        "",
        f"Code under test: HEAD {meta['code_at_start']['head']} at the start, "
        f"{meta['code_at_end']['head']} at the end (each arm runs what is on disk when it "
        "starts; `meta.per_arm[..].code` per arm).",
        "",
    ]
    for wl, arms in results.items():
        wmeta = meta["workloads"][wl]
        lines += [
            f"## {wl}",
            "",
            wmeta["description"] + ".",
            "",
            f"Cluster: speeds {wmeta['speeds']}, {wmeta['gpu_blocks']} KV blocks of 64 tokens "
            f"per worker; {wmeta['requests']} requests per arm per repeat; driver "
            f"{wmeta['driver']}."
            + (f" Scaling: {json.dumps(wmeta['scaling'])}." if wmeta.get("scaling") else ""),
            "",
        ]
        head = [
            "arm",
            "TTFT p50",
            "TTFT p90",
            "TTFT p99",
            "ITL p50",
            "ITL p99",
            "E2E p50",
            "E2E p99",
            "out tok/s",
            "failed",
            "KV hit",
            "ideal",
            "imbalance",
        ]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        base = arms.get(BASELINE, {})
        for arm, m in arms.items():
            cells = [arm]
            for k in KEYS:
                v = m.get(k)
                if k in ("failed", "ideal_hit_ratio"):
                    cells.append("-" if v is None else f"{v:g}")
                elif k == "imbalance":
                    cells.append("-" if v is None else f"{v:.2f}")
                else:
                    cells.append(
                        fmt_ratio(v, base.get(k))
                        if arm != BASELINE
                        else ("-" if v is None else f"{v:g}")
                    )
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if wmeta.get("per_seed"):
            lines += per_seed_markdown(wl, wmeta["per_seed"])
    lines += [
        "## Targets (ours vs `dynamo_kv`, same run)",
        "",
        "| target | ours | kv / ideal | ratio | met |",
        "|---|---|---|---|---|",
    ]
    for t in targets:
        lines.append(
            f"| {t['target']} | {t['ours']} | {t['dynamo_kv']} | {t['ratio']} | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    if tail_table:
        legend = (
            "The requests at or above the arm's pooled p99: *cold* (no cache could hold "
            "any of the prompt), *lost* (a cached prefix existed and the arm served under "
            "90% of it: a routing choice), *hit* (cached as the ideal allows; the worker "
            "was busy)."
        )
        lines += [
            "",
            "## What each arm's TTFT p99 is made of (`benchmarks/tail.py`)",
            "",
            legend,
            "",
            tail_table,
        ]
    lines += ["", f"Load during the run: {json.dumps(meta['load_summary'])}.", ""]
    path.write_text("\n".join(lines))


def plot(path: Path, all_records: list[Record], results: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib missing (pip install -e .[bench]): no PNG", file=sys.stderr)
        return False
    wls = list(results)
    fig, axes = plt.subplots(1, len(wls), figsize=(4.2 * len(wls), 3.6), squeeze=False)
    by = defaultdict(list)
    for r in all_records:
        if r.ok and r.ttft_ms is not None:
            by[(r.workload, r.arm)].append(r.ttft_ms)
    for ax, wl in zip(axes[0], wls, strict=True):
        for arm in results[wl]:
            vals = np.sort(by.get((wl, arm), []))
            if len(vals):
                ax.plot(
                    vals,
                    np.arange(1, len(vals) + 1) / len(vals),
                    label=arm,
                    lw=2.2 if arm == "ours" else 1.2,
                )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(wl)
        ax.set_xlabel("TTFT (ms, log)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of requests")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"TTFT distribution per arm ({MACHINE})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.routing",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--short", action="store_true", help="the `make bench` version (default)")
    mode.add_argument("--full", action="store_true", help="the full version (committed results)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="default 1; arms run in a rotated order in each repeat",
    )
    ap.add_argument("--scale", type=float, default=None, help="override the workload scale")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds: one repeat per seed (overrides --seed and --repeats); "
        "every seed's figures and ratios are reported",
    )
    ap.add_argument(
        "--name",
        default="routing",
        help="basename of the result files (<name>.json, .md, _records.jsonl.gz, _ttft.png)",
    )
    ap.add_argument("--speedup", type=float, default=1.0, help="mocker speed-up of a fast worker")
    ap.add_argument("--no-aiperf", action="store_true", help="Mooncake replay with our driver")
    ap.add_argument("--out", default=str(RESULTS), help="results directory")
    ap.add_argument(
        "--traces-dir",
        default=None,
        help="copy our arm's processor traces here (for analysis; not committed)",
    )
    ap.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra AKR_* (or DYN_RUNTIME_*: Dynamo's runtime threads) environment for "
        "our processor (experiments; recorded in meta)",
    )
    args = ap.parse_args()
    for kv in args.ours_env:
        key, _, value = kv.partition("=")
        if not key.startswith(("AKR_", "DYN_RUNTIME_")):
            ap.error(f"--ours-env takes AKR_* or DYN_RUNTIME_* variables, not {key}")
        OURS_ENV[key] = value
    global TRACES_DIR
    TRACES_DIR = Path(args.traces_dir) if args.traces_dir else None
    full = bool(args.full)
    scale = args.scale if args.scale is not None else (1.0 if full else 0.2)
    seeds = [int(x) for x in args.seeds.split(",") if x] if args.seeds else None
    if seeds and args.repeats is not None:
        ap.error("--seeds runs one repeat per seed: drop --repeats")
    repeats = len(seeds) if seeds else (args.repeats if args.repeats is not None else 1)
    workloads = [w for w in args.workloads.split(",") if w]
    arms = [a for a in args.arms.split(",") if a]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w}")
    for a in arms:
        if a not in ARMS:
            ap.error(f"unknown arm {a}")
    use_aiperf = aiperf_runner.available() and not args.no_aiperf
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.routing " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.monotonic()
    load_before = os.getloadavg()
    run_dir = Path(tempfile.mkdtemp(prefix="akr-bench-"))
    code_at_start = code_state()
    print(
        f"routing benchmark: {'full' if full else 'short'} run, scale {scale}, "
        f"{repeats} repeat(s){f' (seeds {seeds})' if seeds else ''}, workloads {workloads}, "
        f"arms {arms}; "
        f"Mooncake via {'AIPerf' if use_aiperf else 'our driver'}; "
        f"load average before {load_before[0]:.2f}",
        flush=True,
    )

    results: dict[str, dict[str, dict]] = {}
    meta_wl: dict[str, Any] = {}
    spread: dict[str, dict[str, dict[str, list]]] = {}
    per_arm_meta: dict[str, dict[str, list]] = {}
    all_records: list[Record] = []
    loads: list[dict] = []
    seed_targets: list[dict] = []
    try:
        for wname in workloads:
            rep_wls = (
                [build(wname, sd, scale, args.speedup) for sd in seeds]
                if seeds
                else [build(wname, args.seed, scale, args.speedup)] * repeats
            )
            wl = rep_wls[0]
            ideal = pooled_ideal(rep_wls[: len(seeds)] if seeds else rep_wls[:1])
            driver_name = (
                ("aiperf " + (aiperf_runner.version() or ""))
                if (wname == "mooncake" and use_aiperf)
                else "benchmarks/driver.py (httpx)"
            )
            scaling = {k: v for k, v in wl.scaling.items() if k != "rows"}
            meta_wl[wname] = {
                "description": wl.description,
                "speeds": wl.speeds,
                "gpu_blocks": wl.gpu_blocks,
                "requests": wl.requests,
                "sessions": len(wl.sessions),
                "driver": driver_name,
                "ideal_hit_ratio": round(ideal, 4),
                "scaling": scaling,
            }
            if seeds:
                meta_wl[wname]["seeds"] = {
                    str(sd): {
                        "requests": w.requests,
                        "sessions": len(w.sessions),
                        "ideal_hit_ratio": round(w.ideal_hit_ratio(), 4),
                        "scaling": {k: v for k, v in w.scaling.items() if k != "rows"},
                    }
                    for sd, w in zip(seeds, rep_wls, strict=True)
                }
                for sd, w in zip(seeds, rep_wls, strict=True):
                    print(f"   seed {sd}: {w.requests} requests, {w.scaling}", flush=True)
            print(
                f"\n== {wname}: {wl.requests} requests in {len(wl.sessions)} sessions, "
                f"ideal hit ratio {ideal:.3f}, speeds {wl.speeds}, {wl.gpu_blocks} blocks",
                flush=True,
            )
            pooled: dict[str, list[Record]] = defaultdict(list)
            walls: dict[str, float] = defaultdict(float)
            imbalances: dict[str, list[float]] = defaultdict(list)
            per_repeat: dict[str, list[dict]] = defaultdict(list)
            extra: dict[str, list] = defaultdict(list)
            for rep in range(repeats):
                order = arms[rep % len(arms) :] + arms[: rep % len(arms)]  # rotate to spread drift
                wl = rep_wls[rep]
                rep_ideal = wl.ideal_hit_ratio()
                for arm in order:
                    try:
                        res = run_arm(arm, wl, rep, run_dir, use_aiperf)
                    except Exception as exc:
                        print(f"  [{rep}] {arm}: FAILED to run: {exc}", flush=True)
                        res = {
                            "records": [
                                Record(
                                    wname,
                                    arm,
                                    rep,
                                    "arm-failed",
                                    "-",
                                    0,
                                    0.0,
                                    0,
                                    None,
                                    None,
                                    None,
                                    0,
                                    0,
                                    0,
                                    0,
                                    0,
                                    error=str(exc)[:500],
                                )
                            ],
                            "wall_s": 0.0,
                            "load": {
                                "load1_mean": os.getloadavg()[0],
                                "load1_max": os.getloadavg()[0],
                                "cpu_busy_mean": None,
                                "cpu_busy_max": None,
                            },
                            "arm_error": str(exc)[-2000:],
                        }
                    recs = res["records"]
                    pooled[arm] += recs
                    walls[arm] += res["wall_s"]
                    if res.get("imbalance") is not None:
                        imbalances[arm].append(res["imbalance"])
                    summ = summarize(recs, res["wall_s"], rep_ideal, res.get("imbalance"))
                    per_repeat[arm].append(summ)
                    loads.append(res["load"])
                    info = {
                        k: res[k]
                        for k in (
                            "requests_per_worker",
                            "poll_coverage",
                            "reasons",
                            "retries",
                            "errors",
                            "trace_records",
                            "load",
                            "stack_up_s",
                            "aiperf_command",
                            "aiperf_wall_s",
                            "arm_error",
                            "code",
                        )
                        if k in res
                    }
                    info["repeat"] = rep
                    if seeds:
                        info["seed"] = seeds[rep]
                    extra[arm].append(info)
                    all_records += recs
                    print(
                        f"  [{rep}] {arm:<19} ttft p50 {summ['ttft_p50_ms']} "
                        f"p90 {summ['ttft_p90_ms']} p99 {summ['ttft_p99_ms']}  "
                        f"hit {summ['kv_hit_ratio']}  failed {summ['failed']}  "
                        f"imb {summ['imbalance']}  load {res['load']['load1_mean']} "
                        f"cpu {res['load']['cpu_busy_mean']} "
                        f"(arm {res['load'].get('cpu_busy_arm')}, load1 "
                        f"{res['load'].get('loadavg_start')} -> {res['load'].get('loadavg_end')})",
                        flush=True,
                    )
            results[wname] = {}
            spread[wname] = {}
            for arm in arms:
                imb = float(np.mean(imbalances[arm])) if imbalances[arm] else None
                results[wname][arm] = summarize(pooled[arm], walls[arm], ideal, imb)
                spread[wname][arm] = {
                    k: [p[k] for p in per_repeat[arm]] for k in KEYS if k != "ideal_hit_ratio"
                }
            per_arm_meta[wname] = dict(extra)
            if seeds:
                rows = per_seed_rows(seeds, per_repeat, extra)
                meta_wl[wname]["per_seed"] = rows
                seed_targets += per_seed_targets(wname, rows)
                for row in rows:
                    print(f"  seed {row['seed']}: ours/kv {row.get('ratios')}", flush=True)
            if wname == "mixed":
                meta_wl[wname]["classes"] = {
                    arm: {
                        k: summarize(
                            [r for r in pooled[arm] if r.klass == k], walls[arm], ideal, None
                        )
                        for k in ("latency_sensitive", "batch")
                    }
                    for arm in arms
                }
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    load_summary = {
        "load1_mean": round(float(np.mean([x["load1_mean"] for x in loads])), 2) if loads else None,
        "load1_max": round(float(max(x["load1_max"] for x in loads)), 2) if loads else None,
        "cpu_busy_mean": round(
            float(np.mean([x["cpu_busy_mean"] for x in loads if x["cpu_busy_mean"] is not None])), 3
        )
        if loads
        else None,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    targets = check_targets(results) + seed_targets
    meta = {
        "command": command,
        "mode": "full" if full else "short",
        "scale": scale,
        "repeats": repeats,
        "seed": args.seed,
        "seeds": seeds,
        "speedup": args.speedup,
        "started": started,
        "duration_s": round(time.monotonic() - t_start, 1),
        "machine": MACHINE,
        "platform": platform.platform(),
        "code_at_start": code_at_start,
        "code_at_end": code_state(),
        "load_summary": load_summary,
        "mooncake_driver": ("aiperf " + (aiperf_runner.version() or ""))
        if use_aiperf
        else "benchmarks/driver.py (AIPerf not installed in .venv/aiperf or --no-aiperf)",
        "affinity_ttl_s": AFFINITY_TTL_S,
        "ours_env": {"AKR_ROUTER_WORKER_CAPACITY_BLOCKS": "gpu_blocks of the workload", **OURS_ENV},
        "imbalance_method": "max/mean requests per worker. ours: processor trace (exact). stock "
        "arms: changes of the frontend's per-worker last-request gauges polled "
        "every 50 ms (lower bound; coverage = counted/requests in per_arm).",
        "percentiles": "pooled over repeats; per-repeat values in spread",
        "workloads": meta_wl,
        "spread": spread,
        "per_arm": per_arm_meta,
        "targets": targets,
    }
    payload = dict(results)
    payload["meta"] = meta
    name = args.name
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    record_dicts = records_as_dicts(all_records)
    write_markdown(
        out_dir / f"{name}.md",
        results,
        meta,
        targets,
        tail.table(tail.tails(record_dicts)),
        title="" if name == "routing" else name,
    )
    write_records(out_dir / f"{name}_records.jsonl.gz", record_dicts)
    plot(out_dir / f"{name}_ttft.png", all_records, results)
    print(
        f"\nwrote {out_dir}/{name}.json, {name}.md, {name}_records.jsonl.gz, {name}_ttft.png "
        f"in {meta['duration_s']} s"
    )
    print((out_dir / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
