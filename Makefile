# Switchyard: `make run` starts everything on embedded defaults; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test unit integration lint bench bench-analytics clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> creating the virtual environment in $(VENV) and installing Switchyard with its test tools"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

run: install
	$(BIN)/switchyard dev

lint: install
	$(BIN)/ruff check orchestrator workers api tests

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install
	$(BIN)/python -m pytest tests/integration

test: install lint
	$(BIN)/python -m pytest

# Switchyard against a raw Celery baseline (step-to-step, throughput, fan-out, API, 1,000,000 runs, memory) on
# a database and Redis db of its own; writes BENCHMARKS.md. BENCH_ARGS passes flags (e.g. --steps 5000).
bench: install
	$(BIN)/python -m tests.bench.bench_engine $(BENCH_ARGS)

# The analytics alone against 1,000,000 seeded runs; fails if a median is over 100 ms.
bench-analytics: install
	$(BIN)/python -m tests.bench.bench_analytics

clean:
	rm -rf $(VENV) .switchyard .pytest_cache
