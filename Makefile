# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test unit lint bench replay chaos config-doc clean

setup:
	@bash deploy/setup.sh

demo: setup
	$(PY) -m deploy.demo

test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

# The routing benchmark: the `bench` extra (matplotlib) in .venv, AIPerf in its own .venv/aiperf
# (its dependencies would change pinned packages of .venv), then the short run (< 10 minutes).
# `$(PY) -m benchmarks.routing --full` runs the full one.
bench: setup
	@$(PY) -c "import matplotlib, jinja2" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check -e ".[bench]" 2>&1 | grep -v '^WARNING: Location' || true
	@test -x .venv/aiperf/bin/aiperf || { python3 -m venv .venv/aiperf && .venv/aiperf/bin/python -m pip install -q --disable-pip-version-check "aiperf==0.13.0" 2>&1 | grep -v '^WARNING: Location' || true; }
	$(PY) -m benchmarks.routing --short

# The replay suite (benchmarks/replay): every arm on the standard workloads at 8-64 workers on
# a virtual clock; writes benchmarks/results/replay/suite.{json,md,png} (<= 15 minutes).
replay: setup
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check -e ".[bench]" 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m benchmarks.replay suite

# The chaos suite (benchmarks/chaos.py): faults on real local stacks (killed and frozen
# workers, killed processor, unwritable traces, non-reading clients, over-long prompts); writes
# benchmarks/results/chaos.json and chaos_details.json (~6 minutes). `make test` runs its
# short form (tests/integration/test_chaos.py).
chaos: setup
	$(PY) -m benchmarks.chaos

# Regenerate docs/CONFIG.md and deploy/vllm/akr.env from the configuration models.
config-doc: setup
	$(PY) -m deploy.config_reference
	$(PY) -m deploy.vllm.envfile

clean:
	rm -rf .venv .model
