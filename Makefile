# Two entry points on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo demo-record test install install-behaviour clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q -e '.[test]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import sparse_reg, jax, flax, optax, gymnasium, minari"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/sparse-reg demo

# After a change that moves the demo's numbers: run it and record its table in docs/ and README.md.
demo-record: $(VENV)/.installed
	$(BIN)/sparse-reg demo --record

# Lint first (seconds; configured in pyproject.toml), then the tests, one pytest worker per core
# (pytest-xdist): the suite is compile-bound, so two workers on 2 cores cut it from ~14 to ~10 min
# measured beside a niced sweep (docs/architecture.md, "Tests").
LINTED := $(wildcard src tests benchmarks scripts examples)

test: $(VENV)/.installed
	$(BIN)/ruff check $(LINTED)
	$(BIN)/python -m pytest -q -n auto

# Behaviour-policy training (torch + sbx-rl) lives in its own environment so the core stays light.
install-behaviour:
	$(PYTHON) -m venv .venv-behaviour
	.venv-behaviour/bin/python -m pip install -q -e '.[behaviour]'

clean:
	rm -rf $(VENV) .pytest_cache
