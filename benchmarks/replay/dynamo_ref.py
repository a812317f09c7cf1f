"""Dynamo 1.6.1's own offline replay (``dynamo.replay.run_trace_replay``) as a reference arm.

It runs the same mocker engine our simulation ports, but only with Dynamo's two routers
(``round_robin`` and ``kv_router``), one engine configuration for every worker, and the trace
formats Dynamo reads. Two are used here:

* ``mooncake``: JSONL rows ``{timestamp, input_length, output_length, hash_ids}``;
* ``agentic_mooncake`` (schema version 2): a header line ``{"schema":
  "dynamo.agentic_mooncake", "version": 2, "block_size": 512, "hash_id_scope": "local",
  "source": {"format": ..., "digest": ...}}``, then rows ``{request_id, play_id, session_id,
  model, input_length, output_length, hash_ids, not_before_ms, dependencies: [{request_id,
  trigger: "completion"|"dispatch", delay_ms, relation: "sequence"|"spawn"|"join"|
  "replay_barrier"}]}`` (optional: source_play_ordinal, output_token_ids,
  recorded_api_time_ms, priority, strict_priority, policy_class). Dynamo requires
  ``execution_model`` for it, rejects a concurrency load (``replay_concurrency``) and takes an
  optional ``agentic_lanes``. Hash ids are shared across plays (a system prompt reused by two
  sessions hits the cache).

Records come back in trace order with the fields our own replay writes. Dynamo's mooncake
records carry no row id: they are matched to rows by (arrival, input length, output length,
and under round-robin the worker ``row % N``); rows identical in all of these may swap, which
changes no figure. Agentic records carry the row's ``request_id``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.replay.cluster import ClusterConfig
from benchmarks.replay.records import RequestRecord
from benchmarks.replay.trace import MOONCAKE_HASH_BLOCK

MODES = ("round_robin", "kv_router")
FORMATS = ("mooncake", "agentic_mooncake")


def engine_args(cluster: ClusterConfig) -> dict[str, Any]:
    """The mocker engine configuration Dynamo's replay takes, from a cluster config."""
    speeds = {cluster.worker_speed(w) for w in range(cluster.num_workers)}
    if len(speeds) != 1:
        raise ValueError(
            "Dynamo 1.6.1's replay takes one engine configuration for all workers: "
            "heterogeneous speeds run only on our simulation"
        )
    return {
        "engine": {
            "block_size": cluster.block_size,
            "num_gpu_blocks": cluster.num_gpu_blocks,
            "max_num_seqs": cluster.max_num_seqs,
            "max_num_batched_tokens": cluster.max_num_batched_tokens,
            "enable_chunked_prefill": cluster.enable_chunked_prefill,
            "speedup_ratio": speeds.pop(),
            "decode_speedup_ratio": cluster.decode_speedup_ratio,
        }
    }


def _rows(path: Path, trace_format: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            if raw.strip():
                rows.append(json.loads(raw))
    if trace_format == "agentic_mooncake" and rows and rows[0].get("schema"):
        rows = rows[1:]
    return rows


def _record(index: int, p: dict[str, Any], session_id: str | None) -> RequestRecord:
    if p.get("terminal_status") != "completed" or p.get("first_token_ms") is None:
        raise RuntimeError(
            f"Dynamo's replay did not complete trace row {index} ({p.get('terminal_status')}): "
            f"a prompt of {p.get('input_length')} tokens larger than a worker's KV is rejected "
            "there and an error in our replay"
        )
    out = int(p["output_length"])
    return RequestRecord(
        index=index,
        request_id=str(p.get("request_id") or f"r{index}"),
        worker=int(p["decode_worker_idx"]),
        arrival_ms=float(p["arrival_time_ms"]),
        first_token_ms=float(p["first_token_ms"]),
        finish_ms=float(p["terminal_time_ms"]),
        input_length=int(p["input_length"]),
        output_length=out,
        reused_tokens=int(p["reused_input_tokens"] or 0),
        ttft_ms=float(p["ttft_ms"]),
        e2e_ms=float(p["e2e_latency_ms"]),
        itl_ms=float(p["itl_ms"]) if out > 1 and p.get("itl_ms") is not None else None,
        session_id=session_id,
    )


def _match_mooncake(
    rows: list[dict[str, Any]], per_request: list[dict[str, Any]], cluster: ClusterConfig, mode: str
) -> list[RequestRecord]:
    def key(arrival: float, isl: int, osl: int, worker: int | None) -> tuple:
        return (round(arrival, 6), isl, osl, worker)

    n = cluster.num_workers
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for p in per_request:
        w = int(p["decode_worker_idx"]) if mode == "round_robin" else None
        k = key(p["arrival_time_ms"], p["input_length"], p["requested_output_length"], w)
        groups.setdefault(k, []).append(p)
    out = []
    for i, row in enumerate(rows):
        arrival = float(row["timestamp"]) / cluster.arrival_speedup_ratio
        w = i % n if mode == "round_robin" else None
        k = key(arrival, int(row["input_length"]), int(row["output_length"]), w)
        found = groups.get(k)
        if not found:
            raise RuntimeError(f"Dynamo returned no record for trace row {i} ({k})")
        out.append(_record(i, found.pop(0), row.get("session_id")))
    return out


def run_dynamo_replay(
    path: Path | str,
    cluster: ClusterConfig,
    mode: str,
    *,
    trace_format: str = "mooncake",
    limit: int | None = None,
    trace_block_size: int = MOONCAKE_HASH_BLOCK,
    execution_model: str = "replay",
    router_knobs: dict[str, Any] | None = None,
) -> list[RequestRecord]:
    """Run Dynamo's replay of the trace at ``path`` on ``cluster`` with its ``mode`` router;
    ``limit`` keeps the first rows of a mooncake trace; ``router_knobs`` are ``KvRouterConfig``
    arguments for its KV router (default: its defaults). Records in trace order."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if trace_format not in FORMATS:
        raise ValueError(f"trace_format must be one of {FORMATS}, got {trace_format!r}")
    if limit is not None and trace_format != "mooncake":
        raise ValueError("limit applies to mooncake traces only (a slice breaks dependencies)")
    os.environ.setdefault("DYN_LOG", "error")  # the kv router logs every decision at INFO
    from dynamo.replay import run_trace_replay

    path = Path(path)
    rows = _rows(path, trace_format)
    with tempfile.TemporaryDirectory(prefix="akr-dynamo-replay-") as tmp:
        run_path = path
        if limit is not None:
            rows = rows[:limit]
            run_path = Path(tmp) / "slice.jsonl"
            run_path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        kwargs: dict[str, Any] = {
            "extra_engine_args": engine_args(cluster),
            "num_workers": cluster.num_workers,
            "router_mode": mode,
            "arrival_speedup_ratio": cluster.arrival_speedup_ratio,
            "trace_format": trace_format,
            "capture_per_request": True,
            # Dynamo takes a lag for its KV router only; round-robin reads no KV events.
            "kv_event_lag_ms": (cluster.kv_event_lag_ms or None) if mode == "kv_router" else None,
        }
        if router_knobs:
            from dynamo.llm import KvRouterConfig

            kwargs["router_config"] = KvRouterConfig(**router_knobs)
        if trace_format == "mooncake":
            kwargs["trace_block_size"] = trace_block_size
        else:
            kwargs["execution_model"] = execution_model
        report = run_trace_replay(str(run_path), **kwargs)
    per_request = list(report.per_request)
    if len(per_request) != len(rows):
        raise RuntimeError(f"Dynamo returned {len(per_request)} records for {len(rows)} rows")
    if trace_format == "mooncake":
        return _match_mooncake(rows, per_request, cluster, mode)
    by_id = {str(p["request_id"]): p for p in per_request}
    return [
        _record(i, by_id[str(r["request_id"])], r.get("session_id")) for i, r in enumerate(rows)
    ]
