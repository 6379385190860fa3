# `make demo` and `make test` do all the set-up they need (scripts/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
READY := $(VENV)/.netspark-ready

.PHONY: setup demo test test-fast test-rxe lint bench-buffers clean

$(READY): scripts/setup.sh pyproject.toml setup.py $(wildcard csrc/*)
	VENV=$(VENV) scripts/setup.sh
	touch $@

setup: $(READY)

demo: $(READY)
	$(PY) bench/demo.py

test: $(READY)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not rxe"

test-fast: $(READY)
	$(PY) -m pytest -q -m "not rxe and not slow"

test-rxe: $(READY)
	$(PY) -m pytest -q -m rxe tests/rxe

lint: $(READY)
	$(VENV)/bin/ruff check .

bench-buffers: $(READY)
	$(PY) bench/buffers.py --gib 1 --reps 5 --json docs/results/buffers.json

clean:
	rm -rf $(VENV) build *.egg-info netspark/*.so
