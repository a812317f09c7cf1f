"""benchmarks.hit_latency (TTFT split by cache outcome) and the recorded AIPerf command."""

from __future__ import annotations

from benchmarks.hit_latency import split, table


def _rec(arm: str, cached: int, ttft: float, status: int = 200) -> dict:
    return {
        "workload": "w",
        "arm": arm,
        "status": status,
        "prompt_tokens": 1000,
        "cached_tokens": cached,
        "ttft_ms": ttft,
    }


def test_split_counts_hits_and_misses_and_skips_failures() -> None:
    recs = [
        _rec("a", 950, 30.0),
        _rec("a", 900, 34.0),
        _rec("a", 100, 80.0),
        _rec("a", 600, 50.0),
        _rec("a", 0, 999.0, status=500),
        _rec("b", 0, 70.0),
    ]
    s = split(recs)
    a, b = s[("w", "a")], s[("w", "b")]
    assert (a["n"], a["hits"], a["misses"]) == (4, 2, 1)
    assert a["hit_ttft_p50"] == 32.0 and a["miss_ttft_p50"] == 80.0 and a["ttft_p50"] == 42.0
    assert b["hits"] == 0 and b["hit_ttft_p50"] is None
    assert "| w | b | 1 | 0 | - | 1 | 70.0 | 70.0 |" in table(s)


def test_aiperf_command_is_recorded_without_machine_paths(tmp_path) -> None:
    from pathlib import Path

    from benchmarks.aiperf_runner import shown_command

    repo = Path(__file__).resolve().parent.parent.parent
    out = tmp_path / "aiperf-ours-0"
    cmd = [
        str(repo / ".venv/aiperf/bin/aiperf"),
        "profile",
        "--input-file",
        str(tmp_path / "trace.jsonl"),
        "--artifact-dir",
        str(out),
        "--extra-inputs",
        '{"a": 1}',
    ]
    shown = shown_command(cmd, out)
    assert str(repo) not in shown and str(tmp_path) not in shown
    assert shown.startswith(".venv/aiperf/bin/aiperf profile --input-file <run dir>/trace.jsonl")
