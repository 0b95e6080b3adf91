# IIR — build, run, test. Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := ./var
DEV_ENV := $(DATA)/dev.env
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

SOURCES := pyproject.toml Cargo.toml native/Cargo.toml $(shell find native/src -type f 2>/dev/null)

.PHONY: install run test test-deps lint fmt bench clean engine-env test-engine bench-engine scrub-report

install: $(STAMP)  ## create .venv with IIR and its dev tools (quick when nothing changed)

$(STAMP): $(SOURCES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# A development key, and iir/echo as routing's last resort so that "auto" answers on a box with
# no model yet (a production install answers 503 instead). Written once; edit it freely.
$(DEV_ENV): | $(STAMP)
	@mkdir -p $(DATA)
	@umask 077; $(BIN)/iir keygen --prefix dev --env > $@.tmp && \
	  printf '%s\n' '# model "auto" falls back to the built-in echo model when nothing else can serve' \
	    'IIR_ROUTING_LAST_RESORT=iir/echo' >> $@.tmp && mv $@.tmp $@
	@echo "Generated a development API key in $@"

run: install $(DEV_ENV)  ## serve on $(HOST):$(PORT) with ./var as the data directory
	@echo "API key: $$(sed -n 's/^IIR_API_KEY=//p' $(DEV_ENV))"
	@echo "Try: curl -H \"Authorization: Bearer $$(sed -n 's/^IIR_API_KEY=//p' $(DEV_ENV))\" http://$(HOST):$(PORT)/v1/models"
	@echo "Console: http://$(HOST):$(PORT)/console"
	IIR_DATA_DIR=$(DATA) $(BIN)/iir serve --host $(HOST) --port $(PORT) --env-file $(DEV_ENV)

lint: install  ## ruff, the import contract, mypy, cargo fmt and clippy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	cargo fmt --all -- --check
	cargo clippy --all-targets --quiet -- -D warnings

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	cargo fmt --all

test: install test-deps lint  ## lint, Rust unit tests, then the Python suite against real servers
	cargo test --quiet
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-deps:  ## system tools the tests use (systemd-analyze, dpkg-deb, ...), installed only when missing
	@sh packaging/ci-deps.sh

bench: install test-deps  ## benchmarks (pytest-benchmark); see README for the numbers
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } || echo "wrk missing: throughput benchmarks will be skipped"
	$(BIN)/pytest bench -q --benchmark-only --benchmark-columns=min,median,mean,ops,rounds $(PYTEST_ARGS)
	@if [ -x $(ENGINE_VENV)/bin/python ]; then $(MAKE) --no-print-directory bench-engine; fi

# The local engine for real: vLLM's CPU build beside IIR in .venv-engine (~6.4 GB, ~5 min to build
# here, where downloads are fast; quick when built). See README "Local engine and registry".
ENGINE_VENV := .venv-engine
ENGINE_STAMP := $(ENGINE_VENV)/.installed

engine-env: $(ENGINE_STAMP)  ## create .venv-engine: IIR beside vLLM's CPU build

$(ENGINE_STAMP): $(SOURCES) packaging/engine-env.sh
	PYTHON=$(PYTHON) packaging/engine-env.sh $(ENGINE_VENV)
	@touch $@

test-engine: $(ENGINE_STAMP)  ## the local-engine suite: the real vLLM engine inside a real iir serve
	$(ENGINE_VENV)/bin/pytest -q -p no:cacheprovider --timeout 900 tests/engine $(PYTEST_ARGS)

bench-engine: $(ENGINE_STAMP)  ## iir serve beside vllm serve on the same tiny model (README "Performance")
	$(ENGINE_VENV)/bin/python -m bench.engine $(BENCH_ENGINE_ARGS)

scrub-report: install  ## the scrubber's recall and precision on the rule table's fixtures (docs/scrubbing.md)
	$(BIN)/python -m tests.scrub_report

clean:
	rm -rf $(VENV) target .pytest_cache .ruff_cache .benchmarks

# package, deploy-test, logs, generate-api-key
include packaging/packaging.mk
