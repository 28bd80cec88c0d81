# Every target bootstraps .venv itself: a fresh clone needs only python3 >= 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo run test unit integration lint bench chaos clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tickvault needs python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: venv
	$(BIN)/tickvault demo $(DEMO_ARGS)

# The real thing on embedded servers kept in .tickvault/ (RUN_ARGS="--config my.toml").
run: venv
	$(BIN)/tickvault run $(RUN_ARGS)

lint: venv
	$(BIN)/ruff check common producer consumer tests bench
	$(BIN)/ruff format --check common producer consumer tests bench
	$(BIN)/mypy common producer consumer

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

unit: venv
	$(BIN)/python -m pytest -q tests/unit

integration: venv
	$(BIN)/python -m pytest -q tests/integration tests/e2e

bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

# Random kills and server restarts for CHAOS_ARGS (default 120 s), then an exact count.
chaos: venv
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .tickvault .mypy_cache .ruff_cache .pytest_cache .hypothesis
