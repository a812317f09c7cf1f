"""python -m benchmarks.tune end to end on a tiny generated trace, its input errors, and the
pieces it relies on: the held-back split and the KV port's knobs."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.replay.cluster import ClusterConfig, run_replay
from benchmarks.replay.dynamo_kv import KvKnobs, KvPortPolicy
from benchmarks.replay.trace import TraceRequest
from benchmarks.tune.__main__ import main
from benchmarks.tune.compare import ARMS
from benchmarks.tune.split import split_trace
from deploy.vllm.envfile import model_variables, variables_in
from router.config import RouterConfig
from router.tunable import search_space

CLUSTER = ["--workers", "4", "--kv-blocks", "256"]


def tiny_trace(path: Path, n: int = 300, seed: int = 0) -> Path:
    """Mooncake rows drawn from a dozen shared prefixes, about 25 requests a second."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(10**6) for _ in range(6)] for _ in range(12)]
    t, rows = 0.0, []
    for _ in range(n):
        t += rng.expovariate(1 / 40.0)
        hashes = prefixes[rng.randrange(12)][: rng.randrange(2, 6)]
        hashes += [rng.randrange(10**6, 2 * 10**6) for _ in range(rng.randrange(0, 3))]
        row = {
            "timestamp": round(t),
            "input_length": len(hashes) * 512 - rng.randrange(0, 400),
            "output_length": rng.randrange(5, 60),
            "hash_ids": hashes,
        }
        rows.append(json.dumps(row) + "\n")
    path.write_text("".join(rows))
    return path


def test_whole_flow_three_trials(tmp_path: Path) -> None:
    trace = tiny_trace(tmp_path / "tiny.jsonl")
    t0 = time.perf_counter()
    argv = ["--trace", str(trace), *CLUSTER, "--slo", "ttft_p90_ms=300", "--trials", "3"]
    argv += ["--jobs", "1", "--name", "tiny", "--out-root", str(tmp_path / "out")]
    assert main(argv) == 0
    assert time.perf_counter() - t0 < 60
    out = tmp_path / "out" / "tiny"

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"objective", "lower_is_better", "heldout"}
    assert summary["objective"] == "goodput" and summary["lower_is_better"] is False
    assert set(summary["heldout"]) == set(ARMS)
    for arm in ARMS:
        fig = summary["heldout"][arm]
        assert set(fig) == {"objective", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms"}
        assert 0 < fig["ttft_p50_ms"] <= fig["ttft_p90_ms"] <= fig["ttft_p99_ms"]
        assert fig["objective"] > 0

    details = json.loads((out / "details.json").read_text())
    assert details["requests"] == {"all": 300, "tune": 210, "heldout": 90}
    assert details["eval_seeds"] == [0, 1, 2]  # the held-back figures are a mean over seeds
    assert all(len(v) == 3 for v in details["heldout_by_seed"].values())
    for router in ("ours", "kv"):
        r = details["routers"][router]
        assert r["complete"] + r["pruned"] == 3
    # the env file is deploy/vllm/akr.env with the tuned settings active
    env = (out / "akr.env").read_text()
    assert {v for v in variables_in(env) if v.startswith("AKR_")} == set(model_variables())
    tuned = details["routers"]["ours"]["tuned"]
    assert set(tuned) == set(search_space(RouterConfig))
    for name in tuned:
        assert f"\nAKR_ROUTER_{name.upper()}=" in env
    assert "DYN_ROUTER_KV_OVERLAP_SCORE_CREDIT=" in (out / "dynamo_kv.env").read_text()
    report = (out / "report.md").read_text()
    assert "| tuned_ours |" in report and "| default_kv |" in report
    for png in ("history.png", "importance.png"):
        assert (out / png).stat().st_size > 1000

    # The storage resumes: asking for one more trial runs one more per router.
    assert main([*argv[:-6], "--trials", "4", *argv[-6:]]) == 0
    details = json.loads((out / "details.json").read_text())
    for router in ("ours", "kv"):
        r = details["routers"][router]
        assert r["complete"] + r["pruned"] == 4


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--slo", "ttft_p90_ms"], ["--slo", "ttft_p90_ms", "METRIC=MILLISECONDS"]),
        (["--slo", "ttft_p91_ms=500"], ["--slo", "ttft_p91_ms"]),
        (["--slo", "ttft_p90_ms=fast"], ["--slo", "fast"]),
        (["--slo", "ttft_p90_ms=-5"], ["--slo", "> 0"]),
        (["--set", "no_such_knob=1"], ["--set", "no_such_knob", "unknown setting"]),
        (["--only", "no_such_knob"], ["--only", "no_such_knob", "unknown setting"]),
        (["--only", "seed"], ["--only", "seed", "not tunable"]),
        (["--set", "affinity_cap_ms=soon"], ["--set", "affinity_cap_ms"]),
        (["--objective", "speed"], ["--objective", "speed"]),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, capsys, args, names) -> None:
    trace = tiny_trace(tmp_path / "tiny.jsonl", n=20)
    rc = main(["--trace", str(trace), *CLUSTER, "--out-root", str(tmp_path), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    for name in names:
        assert name in err


def test_empty_trace_is_one_clear_line(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["--trace", str(empty), "--out-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --trace {empty}: the trace has no requests"


def test_bad_trace_line_names_file_line_and_field(tmp_path: Path, capsys) -> None:
    bad = tiny_trace(tmp_path / "bad.jsonl", n=5)
    bad.write_text(bad.read_text() + '{"timestamp": 1, "input_length": "x"}\n')
    assert main(["--trace", str(bad), "--out-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad}:6" in err and "hash_ids" in err


def _req(i: int, t: float, session: str | None, parent: int | None = None) -> TraceRequest:
    return TraceRequest(i, t, 600, 8, (i, i + 1), session_id=session, parent=parent)


def test_split_keeps_conversations_whole_and_rebases_time() -> None:
    reqs = [
        _req(0, 0.0, "a"),
        _req(1, 10.0, "b"),
        _req(2, 20.0, "a", parent=0),
        _req(3, 30.0, "c"),
        _req(4, 40.0, "b", parent=1),
        _req(5, 50.0, "d"),
        _req(6, 60.0, "c", parent=3),
    ]
    tune, held = split_trace(reqs, 0.5)
    assert [r.index for r in tune] == [0, 1, 2, 4]  # sessions a, b
    assert [r.index for r in held] == [3, 5, 6]  # sessions c, d, whole
    assert held[0].arrival_ms == 0.0 and held[-1].arrival_ms == 30.0


def _hot_trace(n: int = 200) -> list[TraceRequest]:
    rng = random.Random(1)
    return [
        TraceRequest(i, i * 5.0, 4000, 20, tuple(rng.randrange(4) * 100 + k for k in range(8)))
        for i in range(n)
    ]


def test_kv_knobs_at_defaults_route_as_before() -> None:
    cluster = ClusterConfig(num_workers=4, num_gpu_blocks=512)
    trace = _hot_trace()
    a = run_replay(trace, cluster, KvPortPolicy(seed=3))
    b = run_replay(trace, cluster, KvPortPolicy(seed=3, knobs=KvKnobs()))
    assert [r.worker for r in a] == [r.worker for r in b]


def test_kv_temperature_samples_and_queue_holds_then_releases() -> None:
    cluster = ClusterConfig(num_workers=4, num_gpu_blocks=512)
    trace = _hot_trace()
    greedy = run_replay(trace, cluster, KvPortPolicy(seed=3))
    hot = run_replay(trace, cluster, KvPortPolicy(seed=3, knobs=KvKnobs(router_temperature=5.0)))
    assert [r.worker for r in hot] != [r.worker for r in greedy]
    # near-uniform sampling at a high temperature spreads the work over every worker
    assert np.bincount([r.worker for r in hot], minlength=4).min() > len(trace) / 8

    policy = KvPortPolicy(seed=3, knobs=KvKnobs(router_queue_threshold=0.0))
    released: list = []
    policy.release = _spy(policy.release, released)  # type: ignore[method-assign]
    held = run_replay(trace, cluster, policy)
    assert len(held) == len(trace) and released  # some waited in the router, all finished
    assert np.mean([r.ttft_ms for r in held]) > np.mean([r.ttft_ms for r in greedy])


def _spy(release, seen: list):
    def wrapped(view):
        out = release(view)
        seen.extend(out)
        return out

    return wrapped


async def test_operator_flow_processor_trace_to_deployed_settings(
    tmp_path: Path, monkeypatch
) -> None:
    """The README's three commands: convert the processor's trace, tune, deploy the env file
    (here: the router reads its settings from the file's active lines)."""
    from benchmarks.replay.agentic import main as agentic_main
    from tests.replay.test_agentic import _processor_trace

    src, dst = tmp_path / "processor.jsonl", tmp_path / "traffic.jsonl"
    await _processor_trace(src)
    assert agentic_main(["convert", str(src), str(dst)]) == 0
    argv = ["--trace", str(dst), "--workers", "2", "--kv-blocks", "64", "--trials", "2"]
    argv += ["--jobs", "1", "--eval-seeds", "1", "--name", "ops", "--out-root", str(tmp_path)]
    assert main(argv) == 0
    details = json.loads((tmp_path / "ops" / "details.json").read_text())
    assert details["split"].startswith("conversations")
    env = (tmp_path / "ops" / "akr.env").read_text()
    for line in env.splitlines():
        if line.startswith("AKR_ROUTER_"):
            name, _, value = line.partition("=")
            monkeypatch.setenv(name, value)
    deployed = RouterConfig()
    for name, value in details["routers"]["ours"]["tuned"].items():
        assert getattr(deployed, name) == pytest.approx(value, rel=1e-3)
