"""The standard replay suite: every arm on every workload and cluster size, one JSON.

``python -m benchmarks.replay suite`` (``make replay``) writes, in ``benchmarks/results/replay/``:

* ``suite.json``: ``{workload: {workers: {arm: figures}}}``, each arm's figures with the two
  reuse references of its case (``reuse_pooled_bound``, ``reuse_ideal``) added;
* ``suite.md``: one table per case, latency ratios against ``dynamo_kv``;
* ``suite.png``: TTFT CDF per arm for every case, and reuse against the bounds;
* ``heldout.{json,md,png}`` instead with ``--heldout``: cases outside the suite
  (``heldout_cases``), ours against ``dynamo_kv``;
* ``records/<workload>-<workers>-<arm>.csv.gz``: the per-request records (trace row, worker,
  arrival, TTFT, E2E, ITL, reused tokens). Not committed: the same seed gives identical
  records, and a full set is about 15 MB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.replay import agentic
from benchmarks.replay.arms import TraceFile, run_arm
from benchmarks.replay.cluster import ClusterConfig, block_hashes_of
from benchmarks.replay.metrics import reuse_ideal, reuse_pooled, summarize
from benchmarks.replay.records import RequestRecord
from benchmarks.replay.report import table
from benchmarks.replay.trace import TraceRequest, mooncake_trace, read_mooncake

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "replay"
SLO_TTFT_MS = 2000.0  # goodput counts requests whose first token came within this
ALL_ARMS = ("ours", "dynamo_kv", "dynamo_kv_port", "round_robin")
SESSION_ARMS = (*ALL_ARMS, "dynamo_kv_affinity")


@dataclass(frozen=True)
class Case:
    """One workload on one cluster; ``make_trace`` writes the trace file into a directory."""

    workload: str
    workers: int
    make_trace: Callable[[Path], TraceFile]
    num_gpu_blocks: int
    speeds: tuple[float, ...] | None = None
    speedup_ratio: float = 1.0
    decode_speedup_ratio: float = 1.0
    arrival_speedup_ratio: float = 1.0
    arms: tuple[str, ...] = ALL_ARMS
    slo_ttft_ms: float = SLO_TTFT_MS
    notes: dict = field(default_factory=dict)
    seed: int = 0  # the suite's seed: the routers' RNG seed (run_arm)

    @property
    def key(self) -> str:
        return f"{self.workload}-{self.workers}"

    def cluster(self) -> ClusterConfig:
        return ClusterConfig(
            num_workers=self.workers,
            num_gpu_blocks=self.num_gpu_blocks,
            speeds=list(self.speeds) if self.speeds else None,
            speedup_ratio=self.speedup_ratio,
            decode_speedup_ratio=self.decode_speedup_ratio,
            arrival_speedup_ratio=self.arrival_speedup_ratio,
        )


@dataclass(frozen=True)
class MooncakeTrace:
    """The shared Mooncake conversation trace (its first ``limit`` rows)."""

    limit: int | None = None

    def __call__(self, _: Path) -> TraceFile:
        path = mooncake_trace()
        return TraceFile(path, "mooncake", read_mooncake(path, self.limit), self.limit)


@dataclass(frozen=True)
class AgenticTrace:
    """A generated agentic trace, written once into the suite's work directory."""

    name: str
    preset: agentic.Preset

    def __call__(self, work: Path) -> TraceFile:
        path = work / f"{self.name}.jsonl"
        if not path.exists():
            requests = agentic.generate_agentic(self.preset.seed, self.preset.params)
            agentic.write_agentic(path, requests, extra_header={"akr_case": self.name})
        return TraceFile(path, "agentic", agentic.read_agentic(path))


def agentic_case(
    workload: str,
    workers: int,
    blocks: int,
    *,
    seed: int = 0,
    speed: float = 1.0,
    decode_speedup: float = 1.0,
    pressure: float = 1.5,
    load: float = 0.75,
    speeds: tuple[float, ...] | None = None,
    max_requests: int = 15_000,
    duration_s: float = 600.0,
    base: agentic.AgenticParams | None = None,
) -> Case:
    preset = agentic.pressure_params(
        workers,
        seed,
        num_gpu_blocks=blocks,
        pressure=pressure,
        load=load,
        speed=speed,
        decode_speedup=decode_speedup,
        max_requests=max_requests,
        duration_s=duration_s,
        base=base,
    )
    notes = {
        "pressure": preset.pressure,
        "modelled_load": preset.load,
        "sessions": round(preset.expected_sessions),
        "window_s": preset.params.duration_s,
    }
    return Case(
        workload,
        workers,
        AgenticTrace(f"{workload}-{workers}", preset),
        blocks,
        speeds=speeds,
        speedup_ratio=speed,
        decode_speedup_ratio=decode_speedup,
        arms=SESSION_ARMS,
        notes=notes,
    )


def cases(quick: bool = False, seed: int = 0) -> list[Case]:
    """The standard suite. ``quick``: small slices of the same cases, for a smoke run;
    ``seed``: added to every generated trace's preset seed (the Mooncake trace is fixed) and
    the routers' RNG seed, for the spread of a result across seeds.

    Agentic traces keep more live context than the cluster's KV (``pressure``) with tool gaps
    of 1-10 s; ``agentic_slow`` is a model 8x slower at prefill (decode at the same cost), so a
    cache miss costs 8x more while the router's own cost stays the same."""
    lim = 1500 if quick else None
    cap = 1500 if quick else 15_000
    big = 1500 if quick else 40_000
    suite = [
        Case("mooncake", 8, MooncakeTrace(lim), 16384),
        Case("mooncake", 16, MooncakeTrace(lim), 16384, arrival_speedup_ratio=2.0),
        Case("mooncake", 64, MooncakeTrace(lim), 16384, arrival_speedup_ratio=8.0),
        agentic_case("agentic", 8, 512, seed=seed, max_requests=cap),
        agentic_case("agentic", 64, 256, seed=seed, max_requests=big),
        agentic_case(
            "agentic_slow",
            8,
            128,
            seed=seed,
            speed=0.125,
            decode_speedup=8.0,
            pressure=1.2,
            load=0.5,
            max_requests=cap,
        ),
        agentic_case(
            "agentic_slow",
            64,
            128,
            seed=seed,
            speed=0.125,
            decode_speedup=8.0,
            pressure=1.2,
            load=0.5,
            max_requests=big,
        ),
        agentic_case(
            "heterogeneous",
            8,
            512,
            seed=1 + seed,
            speeds=(2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5),
            max_requests=cap,
        ),
        agentic_case("overload", 8, 512, seed=2 + seed, load=1.5, max_requests=cap),
    ]
    return [replace(c, seed=seed) for c in suite]


def heldout_cases(seed: int = 0) -> list[Case]:
    """Cases the router was never tuned on, to see whether it was fitted to the suite: other
    cluster sizes, pressures, loads and speed mixes (down to a light load whose sessions fit in
    the cache, where no router should gain), and clients whose hints are off by a
    random factor per session (lognormal, sigma 1) or absent, tool calls of 10-60 s, and long
    answers (~850 tokens, up to 8k) between tool calls of 20-120 s (their windows are longer so
    that the traces hold enough requests), and 40 agent types with system prompts of 2-6k
    tokens (fitted to a 16k context, like the other cases), each against ``dynamo_kv`` only.
    The traces' seeds are disjoint from the suite's (11 and up)."""
    arms = ("ours", "dynamo_kv")
    quarter_slow = (1.0,) * 12 + (0.25,) * 4
    heldout = [
        agentic_case("agentic", 16, 512, seed=seed + 11, max_requests=10_000),
        agentic_case("agentic", 32, 256, seed=seed + 12, pressure=2.5, max_requests=12_000),
        agentic_case(
            "agentic_busy", 8, 512, seed=seed + 13, pressure=1.0, load=0.9, max_requests=8000
        ),
        agentic_case(
            "agentic_tight", 8, 512, seed=seed + 14, pressure=3.0, load=0.8, max_requests=8000
        ),
        agentic_case("agentic_busy", 64, 256, seed=seed + 18, load=0.95, max_requests=30_000),
        agentic_case(
            "heterogeneous_slow_quarter",
            16,
            512,
            seed=seed + 15,
            speeds=quarter_slow,
            max_requests=10_000,
        ),
        agentic_case(
            "heterogeneous_one_fast",
            8,
            512,
            seed=seed + 16,
            speeds=(4.0,) + (1.0,) * 7,
            max_requests=8000,
        ),
        agentic_case("overload", 16, 512, seed=seed + 17, load=1.3, max_requests=10_000),
        agentic_case(
            "agentic_light", 8, 512, seed=seed + 21, pressure=0.5, load=0.5, max_requests=8000
        ),
        Case("mooncake", 32, MooncakeTrace(), 16384, arrival_speedup_ratio=4.0),
        agentic_case(
            "agentic_wrong_hints",
            8,
            512,
            seed=seed + 19,
            max_requests=8000,
            base=agentic.AgenticParams(hint_error_sigma=1.0),
        ),
        agentic_case(
            "agentic_unhinted",
            8,
            512,
            seed=seed + 20,
            max_requests=8000,
            base=agentic.AgenticParams(hinted=False),
        ),
        agentic_case(
            "agentic_long_gaps",
            8,
            512,
            seed=seed + 22,
            max_requests=8000,
            duration_s=1800.0,
            base=agentic.AgenticParams(iat_ms=(10_000.0, 60_000.0)),
        ),
        agentic_case(
            "agentic_long_answers",
            8,
            512,
            seed=seed + 23,
            pressure=1.0,
            max_requests=8000,
            duration_s=3600.0,
            base=agentic.AgenticParams(iat_ms=(20_000.0, 120_000.0), osl_range=(64, 8192)),
        ),
        agentic_case(
            "agentic_many_agents",
            8,
            512,
            seed=seed + 24,
            max_requests=8000,
            base=agentic.AgenticParams(num_agent_types=40, system_prompt_blocks=(8, 24)),
        ),
    ]
    return [replace(c, seed=seed, arms=arms) for c in heldout]


def _task(case: Case, arm: str, work: Path, records_dir: Path) -> tuple[str, str, dict]:
    t0 = time.perf_counter()
    trace = case.make_trace(work)
    records, engine = run_arm(arm, trace, case.cluster(), seed=case.seed)
    figures = summarize(records, case.workers, case.slo_ttft_ms)
    figures["engine"] = engine
    figures["wall_s"] = round(time.perf_counter() - t0, 1)
    write_records(records_dir / f"{case.key}-{arm}.csv.gz", records)
    if arm == "ours":  # the references, in the arrival order this arm saw
        figures["reuse_pooled_bound"], figures["reuse_ideal"] = reuse_bounds(case, trace, records)
    return case.key, arm, figures


def served_prompts(
    cluster: ClusterConfig, trace: TraceFile, records: list[RequestRecord]
) -> tuple[list[RequestRecord], list[tuple[int, np.ndarray]]]:
    """The served records in arrival order, with each one's (input tokens, block hashes)."""
    by_index = {t.index: t for t in trace.requests}
    order = sorted((r for r in records if not r.refused), key=lambda r: (r.arrival_ms, r.index))
    prompts = [
        (by_index[r.index].input_length, block_hashes_of(by_index[r.index], cluster)) for r in order
    ]
    return order, prompts


def reuse_bounds(case: Case, trace: TraceFile, records: list[RequestRecord]) -> tuple[float, float]:
    """(pooled, ideal) reuse of the served requests: one LRU of the cluster's capacity, an
    infinite cache."""
    cluster = case.cluster()
    _, prompts = served_prompts(cluster, trace, records)
    capacity = cluster.num_gpu_blocks * case.workers
    return reuse_pooled(prompts, cluster.block_size, capacity), reuse_ideal(
        prompts, cluster.block_size
    )


RECORD_FIELDS = (
    "index",
    "worker",
    "arrival_ms",
    "ttft_ms",
    "e2e_ms",
    "itl_ms",
    "reused_tokens",
)


def write_records(path: Path, records: list[RequestRecord]) -> None:
    """Per-request records as gzipped CSV (times rounded to 0.1 ms to keep the files small)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", compresslevel=9) as f:
        f.write(",".join(RECORD_FIELDS) + "\n")
        for r in records:
            itl = "" if r.itl_ms is None else f"{r.itl_ms:.2f}"
            f.write(
                f"{r.index},{r.worker},{r.arrival_ms:.1f},{r.ttft_ms:.1f},{r.e2e_ms:.1f},{itl},"
                f"{r.reused_tokens}\n"
            )


def read_records(path: Path, trace: TraceFile) -> list[RequestRecord]:
    """Records written by ``write_records``, completed from the trace (lengths, ids)."""
    by_index = {t.index: t for t in trace.requests}
    out = []
    with gzip.open(path, "rt") as f:
        header = f.readline().strip().split(",")
        if tuple(header) != RECORD_FIELDS:
            raise ValueError(f"{path}: header {header} is not {list(RECORD_FIELDS)}")
        for n, line in enumerate(f, 2):
            try:
                out.append(_record_row(line, by_index))
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}:{n}: not a record of this trace ({e!r})") from None
    return out


def _record_row(line: str, by_index: dict[int, TraceRequest]) -> RequestRecord:
    idx, worker, arrival, ttft, e2e, itl, reused = line.rstrip("\n").split(",")
    t = by_index[int(idx)]
    a = float(arrival)
    return RequestRecord(
        index=t.index,
        request_id=str(t.index),
        worker=int(worker),
        arrival_ms=a,
        first_token_ms=a + float(ttft),
        finish_ms=a + float(e2e),
        input_length=t.input_length,
        output_length=t.output_length,
        reused_tokens=int(reused),
        ttft_ms=float(ttft),
        e2e_ms=float(e2e),
        itl_ms=float(itl) if itl else None,
        session_id=t.session_id,
        refused=int(worker) < 0,
    )


def _assemble(suite: list[Case], done: dict[tuple[str, str], dict]) -> dict:
    out: dict = {}
    for case in suite:
        arms = {arm: done[(case.key, arm)] for arm in case.arms if (case.key, arm) in done}
        ours = arms.get("ours", {})
        for fig in arms.values():
            for k in ("reuse_pooled_bound", "reuse_ideal"):
                if k in ours:
                    fig[k] = ours[k]
        out.setdefault(case.workload, {})[str(case.workers)] = arms
    return out


def render(
    title: str, command: str, suite: list[Case], result: dict, updated_by: str | None = None
) -> str:
    """The markdown report: one table per case, in the suite's order, ratios to dynamo_kv;
    ``updated_by``: the command that reran some of its cases (``--only``)."""
    lines = [f"# {title}\n\n`{command}`\n"]
    if updated_by:
        lines.append(f"Cases it names rerun by `{updated_by}`.\n")
    for case in suite:
        lines.append(f"\n## {case.workload}, {case.workers} workers\n")
        figures = result[case.workload][str(case.workers)]
        arms = {arm: figures[arm] for arm in case.arms if arm in figures}
        lines.append(table(arms, baseline="dynamo_kv"))
    return "\n".join(lines) + "\n"


def merge_previous(path: Path, full: list[Case], ran: list[Case], result: dict) -> list[Case]:
    """``result`` with the cases of ``full`` it lacks taken from the report at ``path`` (a run
    with ``--only`` updates its cases there instead of overwriting the others); the cases now
    in ``result``, in the suite's order."""
    previous = json.loads(path.read_text()) if path.exists() else {}
    ran_keys = {c.key for c in ran}
    for case in full:
        old = previous.get(case.workload, {}).get(str(case.workers))
        if case.key not in ran_keys and old is not None:
            result.setdefault(case.workload, {})[str(case.workers)] = old
    return [c for c in full if str(c.workers) in result.get(c.workload, {})]


def main(args: argparse.Namespace) -> int:
    name = "heldout" if args.heldout else "suite"
    full = heldout_cases(args.seed) if args.heldout else cases(quick=args.quick, seed=args.seed)
    suite = full
    if args.only:
        keep = set(args.only.split(","))
        suite = [c for c in full if c.workload in keep or c.key in keep]
    out_dir = args.out or (RESULTS if not args.quick else Path(tempfile.mkdtemp()) / "replay")
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str], dict] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for case in suite:  # write every trace file once, before the workers read them
            case.make_trace(work)
        tasks = [(c, arm) for c in suite for arm in c.arms]
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(_task, c, a, work, out_dir / "records") for c, a in tasks]
            for fut in tqdm(as_completed(futures), total=len(futures), desc="replay suite"):
                key, arm, figures = fut.result()
                done[(key, arm)] = figures
    result = _assemble(suite, done)
    report = suite
    if args.only:
        report = merge_previous(out_dir / f"{name}.json", full, suite, result)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    title = "Replay: held-out cases" if args.heldout else "Replay suite"
    command = " ".join(["python -m benchmarks.replay", *sys.argv[1:]])
    updated_by = None
    if args.only:
        updated_by = command
        command = "python -m benchmarks.replay suite" + (" --heldout" if args.heldout else "")
    markdown = render(title, command, report, result, updated_by)
    (out_dir / f"{name}.md").write_text(markdown)
    from benchmarks.replay.plot import plot_suite

    plot_suite(result, out_dir / "records", out_dir / f"{name}.png")
    print(f"suite: {len(done)} arm runs in {time.perf_counter() - t0:.0f} s -> {out_dir}")
    print(markdown)
    return 0
