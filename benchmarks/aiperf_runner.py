"""Run the Mooncake replay with AIPerf (``aiperf profile --custom-dataset-type mooncake_trace``).

AIPerf is installed in its own virtualenv, ``.venv/aiperf`` (``make bench`` creates it), not in
the project's: aiperf 0.13 pulls transformers 5, datasets, pyarrow, kubernetes, dash, ... and
pins versions of pyzmq/prometheus-client/aiofiles that the project's venv (shared with Dynamo's
wheel and the test suite) should not have changed under it.

Two things needed working around on this offline machine (aiperf 0.13.0):

* ``--tokenizer /path/to/dir`` fails: AIPerf's hash-id prompt synthesis decodes in a process
  pool whose workers load the tokenizer in offline mode through ``snapshot_download``, which
  rejects a filesystem path (``HFValidationError: Repo id must be in the form ...``). We give it
  a Hugging Face cache of its own (``HF_HOME`` in the run directory) holding the tiny model as
  repo ``akr/akr-tiny`` and run with ``HF_HUB_OFFLINE=1``: no network, same tokenizer.
* ``--extra-inputs`` takes the JSON form for nested values
  (``{"stream_options": {"include_usage": true}, "ignore_eos": true}``): the key:value form
  sends the object as a string and the frontend 400s.

``--isl-block-size 64`` maps each hash id to one 64-token block (the trace's 512, scaled by
1/8 like the lengths), so equal hash ids give equal KV blocks on the 64-token-block mocker.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.driver import Record
from benchmarks.workloads import MODEL_DIR, REPO_ROOT

AIPERF_BIN = REPO_ROOT / ".venv" / "aiperf" / "bin" / "aiperf"
HF_REPO = "akr/akr-tiny"
SNAPSHOT = "0" * 40


def available() -> bool:
    return AIPERF_BIN.exists()


def version() -> str | None:
    if not available():
        return None
    out = subprocess.run(
        [str(AIPERF_BIN), "--version"], capture_output=True, text=True, timeout=120
    )
    return out.stdout.strip() or None


def _hf_home(run_dir: Path) -> Path:
    home = run_dir / "hf"
    repo = home / "hub" / ("models--" + HF_REPO.replace("/", "--"))
    snap = repo / "snapshots" / SNAPSHOT
    if not snap.exists():
        snap.mkdir(parents=True)
        for f in MODEL_DIR.iterdir():
            if f.is_file():
                shutil.copy(f, snap / f.name)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(SNAPSHOT)
    return home


def command(url: str, model: str, trace: Path, out_dir: Path, headers: dict[str, str]) -> list[str]:
    cmd = [
        str(AIPERF_BIN),
        "profile",
        "--model",
        model,
        "--endpoint-type",
        "chat",
        "--streaming",
        "--url",
        url,
        "--input-file",
        str(trace),
        "--custom-dataset-type",
        "mooncake_trace",
        "--fixed-schedule",
        "--isl-block-size",
        "64",
        "--tokenizer",
        HF_REPO,
        "--extra-inputs",
        json.dumps({"stream_options": {"include_usage": True}, "ignore_eos": True}),
        "--artifact-dir",
        str(out_dir),
        "--export-level",
        "records",
        "--ui-type",
        "none",
        # keep the client light on a 2-core box
        "--workers-max",
        "2",
        "--record-processors",
        "1",
        "--no-server-metrics",
        "--request-timeout-seconds",
        "180",
    ]
    for k, v in headers.items():
        cmd += ["--header", f"{k}:{v}"]
    return cmd


def run(
    url: str,
    model: str,
    arm: str,
    rows: list[dict[str, Any]],
    ideal: list[int],
    run_dir: Path,
    repeat: int,
    workload: str = "mooncake",
) -> tuple[list[Record], float, str]:
    """Replay ``rows`` (already scaled) with AIPerf; returns records, wall seconds, command."""
    run_dir.mkdir(parents=True, exist_ok=True)
    trace = run_dir / "mooncake_scaled.jsonl"
    with open(trace, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    out_dir = run_dir / f"aiperf-{arm}-{repeat}"
    cmd = command(url, model, trace, out_dir, {})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "AKR_"))}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(_hf_home(run_dir)),
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=run_dir, timeout=1800)
    wall = time.monotonic() - t0
    export = out_dir / "profile_export.jsonl"
    if not export.exists():
        raise RuntimeError(
            f"aiperf failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    records: list[Record] = []
    t_first: float | None = None
    raw = [json.loads(line) for line in export.read_text().splitlines() if line.strip()]
    for item in raw:
        md, m = item["metadata"], item.get("metrics", {})
        start = md.get("request_start_ns", 0) / 1e9
        t_first = start if t_first is None else min(t_first, start)
    for item in raw:
        md, m = item["metadata"], item.get("metrics", {})
        idx = int(md.get("session_num", -1))
        val = functools.partial(_metric_value, m)
        err = item.get("error")
        rec = Record(
            workload=workload,
            arm=arm,
            repeat=repeat,
            session=f"mooncake-{idx}",
            klass="mooncake",
            turn=0,
            t_send_s=md.get("request_start_ns", 0) / 1e9 - (t_first or 0),
            status=200 if not err else int(err.get("code") or 0),
            ttft_ms=val("time_to_first_token"),
            e2e_ms=val("request_latency"),
            itl_ms=val("inter_token_latency"),
            output_tokens=int(val("usage_completion_tokens") or 0),
            prompt_tokens=int(val("usage_prompt_tokens") or 0),
            cached_tokens=int(val("usage_prompt_cache_read_tokens") or 0),
            ideal_cached_tokens=ideal[idx] if 0 <= idx < len(ideal) else 0,
            max_tokens=rows[idx]["output_length"] if 0 <= idx < len(rows) else 0,
            error=(f"{err.get('code')}: {str(err.get('message'))[:300]}" if err else None),
        )
        records.append(rec)
    # Requests AIPerf never recorded count as failed.
    missing = len(rows) - len(records)
    for k in range(max(0, missing)):
        records.append(
            Record(
                workload,
                arm,
                repeat,
                f"mooncake-missing-{k}",
                "mooncake",
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
                error="not recorded by aiperf",
            )
        )
    return records, wall, shown_command(cmd, out_dir)


def shown_command(cmd: list[str], run_dir: Path) -> str:
    """The AIPerf command for the results, without this machine's paths (repo, run dir)."""
    repo = str(Path(__file__).resolve().parent.parent)
    shown = " ".join(c if " " not in c and "{" not in c else repr(c) for c in cmd)
    return shown.replace(str(run_dir.parent), "<run dir>").replace(repo + "/", "")


def _metric_value(metrics: dict[str, Any], name: str) -> Any:
    """One metric's value from an AIPerf record's ``metrics`` (None when absent)."""
    return (metrics.get(name) or {}).get("value")
