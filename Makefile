# Switchyard: `make run` starts everything on embedded defaults; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

CHROMIUM := /usr/bin/chromium

.PHONY: install chromium run test chaos unit integration lint bench bench-analytics clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> creating the virtual environment in $(VENV) and installing Switchyard with its test tools"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

# The web UI's browser tests (tests/integration/test_ui.py) drive Debian's chromium through Playwright;
# `playwright install` is never used. As root, install the package when it is missing.
chromium:
	@if [ -x $(CHROMIUM) ]; then \
	  echo "==> $(CHROMIUM) is installed (the browser of the web UI's tests)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "==> $(CHROMIUM) is missing: installing Debian's chromium for the web UI's tests"; \
	  echo "==> apt-get update"; apt-get update -q && \
	  echo "==> apt-get install -y chromium (a few minutes)" && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium && \
	  echo "==> chromium installed: $$($(CHROMIUM) --version 2>/dev/null)"; \
	else \
	  echo "==> $(CHROMIUM) is missing and this is not root: install the chromium package; until then the"; \
	  echo "    web UI's tests skip (and fail in CI, where SWITCHYARD_REQUIRE_SERVICES=1)"; \
	fi

# make run PORT=9090 CONCURRENCY=4: the API's port and the worker's threads of `switchyard dev`.
PORT ?= 8080
CONCURRENCY ?= 2

run: install
	$(BIN)/switchyard dev --port $(PORT) --concurrency $(CONCURRENCY)

lint: install
	$(BIN)/ruff check orchestrator workers api tests switchyard

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install chromium
	$(BIN)/python -m pytest tests/integration

# --durations: the slowest tests at the end of the output, to keep `make test` under its 15 minutes.
test: install chromium lint
	$(BIN)/python -m pytest -m "not chaos" --durations=15

# The fault-injection scenarios (PostgreSQL down, workers SIGKILLed, Redis restarted or frozen, a
# scheduler frozen mid-pass), each with its figures in the output; .ci/run runs them after `make test`.
chaos: install
	$(BIN)/python -m pytest -m chaos -s tests/integration

# Switchyard against a raw Celery baseline and DBOS Transact (from a run's submission through the API to its
# end; step-to-step, throughput, fan-out, API, 1,000,000 runs, memory) on a database and Redis db of its own;
# writes BENCHMARKS.md. BENCH_ARGS passes flags (e.g. --steps 5000, --only front,chain).
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	@echo "==> installing the bench's peers (DBOS Transact, the [bench] extra)"
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test,bench]'
	@touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP)
	$(BIN)/python -m tests.bench.bench_engine $(BENCH_ARGS)

# The analytics alone against 1,000,000 seeded runs; fails if a median is over 100 ms.
bench-analytics: install
	$(BIN)/python -m tests.bench.bench_analytics

clean:
	rm -rf $(VENV) .switchyard .pytest_cache
