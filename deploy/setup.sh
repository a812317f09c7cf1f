#!/usr/bin/env bash
# Idempotent set-up: .venv with this package, Dynamo 1.6.1 (frontend + mocker) and the tiny
# local model. Safe to run again; does nothing when the stamp matches pyproject.toml.
#
# ai-dynamo==1.6.1 is installed with --no-deps: its dependency `aisimulate` downloads from
# NVIDIA's own index, which this machine cannot reach. Its real needs are listed
# by name below. On a GPU host with internet: pip install "ai-dynamo[vllm]==1.6.1" instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.akr-setup-stamp
want=$(cat pyproject.toml deploy/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -f .model/akr-tiny/tokenizer.json ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# pip's noise filtered out, its exit status kept (pipefail): a failed install stops here,
# before the stamp, so the next run tries again.
install() { "${pip[@]}" install "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }
install --upgrade pip
# setuptools' notice on every editable install (folders named like the package may shadow it)
# is a warning block of 10 lines in a set-up that otherwise prints one.
PYTHONWARNINGS="ignore:Editable installation" install -e ".[test]"
install aiohttp msgspec prometheus-client pyzmq tqdm typing-extensions zstandard pyyaml packaging
install --no-deps ai-dynamo==1.6.1
# The real NeMo Agent Toolkit client, for the tests that drive the gateway with it.
install nvidia-nat-core==1.9.0 openai
"$VENV/bin/python" -c "import dynamo.frontend, dynamo.mocker, dynamo.llm, router, processor, frontend"
"$VENV/bin/python" deploy/make_model.py .model/akr-tiny >/dev/null
echo "$want" > "$STAMP"
echo "set-up done: $VENV, .model/akr-tiny"
