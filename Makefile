# Every target creates .venv and installs exactly the locked dependency set (uv.lock) on first
# use, and again when pyproject.toml or uv.lock change. `make lock` refreshes the lock.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/demo.toml
# uv itself comes from PyPI into the venv, at this version: the installer is pinned too.
UV_VERSION := 0.13.9
UV     := $(BIN)/uv
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export PYTHONHASHSEED := 0
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: demo test test-fast serve bento bench bench-load lint lock lock-check clean

$(UV):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# --frozen: install the lock as it is (never re-resolve); --inexact: leave uv and pip in place.
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --inexact --extra dev --python $(BIN)/python --quiet
	@touch $(STAMP)

## lock: re-resolve pyproject.toml's dependencies into uv.lock (commit the result)
lock: | $(UV)
	$(UV) lock

## lock-check: fail when uv.lock does not match pyproject.toml (what CI checks)
lock-check: | $(UV)
	$(UV) lock --check

## demo: generate the demo CRM, validate it, train and register, score every account, show the tiers
demo: $(STAMP)
	$(BIN)/tiering demo --config $(CONFIG)

## test: the whole test suite (slow end-to-end tests included)
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15

## test-fast: everything but the slow end-to-end tests
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m 'not slow'

# Local use: without TIERING_API_KEY the service on 127.0.0.1 answers without a key.
SERVE_FLAGS ?= $(if $(TIERING_API_KEY),,--no-auth)

## serve: the BentoML service on http://127.0.0.1:3000 with the champion model (after `make demo`)
serve: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/tiering serve --config $(CONFIG) $(SERVE_FLAGS)

## bento: a self-contained Bento (champion + account snapshot) in outputs/account_tiering.bento
bento: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/tiering build --config $(CONFIG)

## bench: the benchmarks, printed as tables (results also under benchmarks/results/)
bench: $(STAMP)
	$(BIN)/python -m benchmarks

## bench-load: the service on loopback: single accounts at 200/s with and without batching, then 1x and 3x capacity
bench-load: $(STAMP)
	$(BIN)/python -m benchmarks.bench_load

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf data outputs mlruns/* benchmarks/results
