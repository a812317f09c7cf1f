# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test unit bench config-doc clean

setup:
	@bash deploy/setup.sh

demo: setup
	$(PY) -m deploy.demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

bench: setup
	$(PY) -m benchmarks.routing --short

clean:
	rm -rf .venv .model
