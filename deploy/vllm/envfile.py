"""Generate deploy/vllm/akr.env: every knob of a GPU deployment in one file.

    python -m deploy.vllm.envfile          # rewrite deploy/vllm/akr.env
    python -m deploy.vllm.envfile --check  # exit 1 if a variable is missing or unknown

The file has three parts:

* ``LAUNCH_*``: knobs of the single-node launcher itself (ports, GPUs, vLLM flags);
* ``DYN_*`` / ``ETCD_ENDPOINTS`` / ``NATS_SERVER``: Dynamo's own runtime variables;
* ``AKR_*``: every variable of the configuration models (the same list as docs/CONFIG.md,
  generated from the same models). Lines the GPU deployment sets differently from the model
  default are active; every other one is commented out with its default, ready to edit.

The ``--check`` mode compares variable *names* with the models (tests/unit/test_deploy_vllm.py
does the same), so a new field in a config model fails the test until this file is regenerated.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from deploy.config_reference import COMPONENTS, _default
from deploy.local_stack import FRONTEND_BODY_LIMIT_MB

ENV_FILE = Path(__file__).resolve().parent / "akr.env"

# Launcher knobs (not read by any component; deploy/vllm/launch.py reads them).
LAUNCH_DEFAULTS: list[tuple[str, str, str]] = [
    (
        "LAUNCH_HOST",
        "127.0.0.1",
        "Address every component binds (frontend, gateway, processor metrics, Dynamo TCP planes). "
        "127.0.0.1 keeps the whole stack on loopback; 0.0.0.0 exposes it (gateway included).",
    ),
    (
        "LAUNCH_FRONTEND_PORT",
        "8000",
        "HTTP port of the stock Dynamo frontend (the gateway's upstream).",
    ),
    (
        "LAUNCH_WORKER_SYSTEM_PORT_BASE",
        "8081",
        "Worker i serves Dynamo's /metrics and /health on DYN_SYSTEM_PORT = base + i.",
    ),
    (
        "LAUNCH_KV_EVENTS_PORT_BASE",
        "20080",
        "Worker i publishes vLLM KV events over ZMQ on base + i (one port per worker).",
    ),
    ("LAUNCH_GPUS", "", "Comma list of GPU ids, one per worker; empty = 0..N-1."),
    (
        "LAUNCH_WORKER_MODEL",
        "akr-internal-workers",
        "Model name the vLLM workers register under (internal: only the processor is public).",
    ),
    (
        "LAUNCH_WORKER_ENDPOINT",
        "workers.backend.generate",
        "Dynamo endpoint of the workers (must equal AKR_PROCESSOR_WORKER_ENDPOINT).",
    ),
    (
        "LAUNCH_VLLM_ARGS",
        "--gpu-memory-utilization 0.90",
        "Extra vLLM engine flags appended to every worker (shell-quoted string).",
    ),
    ("LAUNCH_WORKDIR", "", "Logs, traces and file discovery state; empty = a new temp dir."),
]

# Dynamo's own variables (names checked in the ai-dynamo 1.6.1 wheel: runtime_args.py
# env_var= entries, and the strings of _core.abi3.so for ETCD_ENDPOINTS / NATS_SERVER).
DYN_DEFAULTS: list[tuple[str, str, str]] = [
    (
        "DYN_DISCOVERY_BACKEND",
        "file",
        "file (single node, no etcd) or etcd (with NATS); --discovery overrides.",
    ),
    ("DYN_REQUEST_PLANE", "tcp", "Request transport between components."),
    (
        "DYN_EVENT_PLANE",
        "zmq",
        "zmq with file discovery; the launcher uses nats with --discovery etcd.",
    ),
    ("ETCD_ENDPOINTS", "http://127.0.0.1:2379", "etcd discovery only."),
    ("NATS_SERVER", "nats://127.0.0.1:4222", "etcd discovery only (event plane)."),
    ("HF_HUB_OFFLINE", "0", "1 once the model is in the local Hugging Face cache."),
    ("DYN_LOG", "info", "Log level of Dynamo's Rust runtime."),
    (
        "DYN_HTTP_BODY_LIMIT_MB",
        str(FRONTEND_BODY_LIMIT_MB),
        "Stock frontend's body limit: keeps huge prompts off the processor's loop "
        "(deploy/local_stack.py FRONTEND_BODY_LIMIT_MB).",
    ),
]

# AKR_* values that differ from the model defaults on a GPU node. The launcher fills
# AKR_PROCESSOR_MODEL_NAME / _MODEL_PATH from --model and the gateway's upstream from
# LAUNCH_FRONTEND_PORT unless this file sets them.
AKR_OVERRIDES: dict[str, str] = {
    "AKR_PROCESSOR_METRICS_PORT": "9095",
    "AKR_PROCESSOR_BLOCK_SIZE": "64",
    "AKR_GATEWAY_PORT": "8080",
}
LAUNCHER_FILLS = {
    "AKR_PROCESSOR_MODEL_NAME": "set by the launcher: --served-model-name or --model",
    "AKR_PROCESSOR_MODEL_PATH": "set by the launcher: --model",
    "AKR_PROCESSOR_WORKER_ENDPOINT": "set by the launcher: LAUNCH_WORKER_ENDPOINT",
    "AKR_PROCESSOR_TRACE_PATH": "set by the launcher: <workdir>/traces/processor.jsonl",
    "AKR_GATEWAY_UPSTREAM_URL": "set by the launcher: http://LAUNCH_HOST:LAUNCH_FRONTEND_PORT",
    "AKR_GATEWAY_PUBLIC_MODELS": "set by the launcher: the public model name",
    "AKR_GATEWAY_HOST": "set by the launcher: LAUNCH_HOST",
    "AKR_PROCESSOR_METRICS_HOST": "set by the launcher: LAUNCH_HOST",
}


def model_variables() -> dict[str, str]:
    """Every AKR_* variable of the configuration models -> its default (as in docs/CONFIG.md)."""
    out: dict[str, str] = {}
    for _title, model, _what in COMPONENTS:
        prefix = model.model_config.get("env_prefix", "")
        for name, field in model.model_fields.items():
            out[f"{prefix}{name.upper()}"] = _default(field)
    return out


def render(tuned: dict[str, str] | None = None, header: list[str] | None = None) -> str:
    """The env file; ``tuned`` sets AKR_* variables active with their tuned values
    (``python -m benchmarks.tune`` writes such a file, ``header`` says how it was made)."""
    tuned = tuned or {}
    lines = [
        "# agent-kv-router on vLLM GPUs: every knob of one node in one file.",
        "# Generated by `python -m deploy.vllm.envfile`; edit values freely, regenerate when a",
        "# config model gains a field (tests/unit/test_deploy_vllm.py fails until then).",
        "# Used by: python -m deploy.vllm.launch --env-file deploy/vllm/akr.env ...",
        "# Meaning of every AKR_* variable: docs/CONFIG.md.",
        *(f"# {h}" for h in header or []),
        "",
        "# --- launcher (deploy/vllm/launch.py) ---",
    ]
    for name, value, meaning in LAUNCH_DEFAULTS:
        lines += [f"# {meaning}", f"{name}={_quote(value)}"]
    lines += ["", "# --- Dynamo runtime ---"]
    for name, value, meaning in DYN_DEFAULTS:
        lines += [f"# {meaning}", f"{name}={_quote(value)}"]
    current_prefix = None
    for name, default in model_variables().items():
        prefix = "_".join(name.split("_")[:2])
        if prefix != current_prefix:
            lines += ["", f"# --- {prefix}_* (docs/CONFIG.md) ---"]
            current_prefix = prefix
        if name in tuned:
            shown = "" if default in ("unset", "(empty)") else default
            lines += [f"# tuned (default {shown or 'unset'})", f"{name}={_quote(tuned[name])}"]
        elif name in AKR_OVERRIDES:
            lines.append(f"{name}={_quote(AKR_OVERRIDES[name])}")
        elif name in LAUNCHER_FILLS:
            lines += [f"# ({LAUNCHER_FILLS[name]}; uncomment to override)", f"# {name}="]
        else:
            shown = "" if default in ("unset", "(empty)") else default
            lines.append(f"# {name}={_quote(shown)}")
    lines.append("")
    return "\n".join(lines)


def _quote(value: str) -> str:
    return f'"{value}"' if (" " in value or value == "") else value


_VAR = re.compile(
    r"^\s*#?\s*((?:AKR|LAUNCH|DYN)_[A-Z0-9_]+|ETCD_ENDPOINTS|NATS_SERVER|HF_HUB_OFFLINE)="
)


def variables_in(text: str) -> set[str]:
    """Every variable named by a ``NAME=`` line of an env file, commented out or not."""
    return {m.group(1) for line in text.splitlines() if (m := _VAR.match(line))}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.vllm.envfile",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument(
        "--check", action="store_true", help="fail if akr.env misses or adds an AKR_ variable"
    )
    args = parser.parse_args()
    if args.check:
        have = {v for v in variables_in(ENV_FILE.read_text()) if v.startswith("AKR_")}
        want = set(model_variables())
        if have != want:
            print(
                f"{ENV_FILE} is stale: missing {sorted(want - have)}, "
                f"unknown {sorted(have - want)}; "
                "run python -m deploy.vllm.envfile",
                file=sys.stderr,
            )
            sys.exit(1)
        return
    ENV_FILE.write_text(render())
    print(f"wrote {ENV_FILE}")


if __name__ == "__main__":
    main()
