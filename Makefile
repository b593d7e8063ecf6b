# Every target creates .venv and installs the project on first use (again when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/demo.toml
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export PYTHONHASHSEED := 0

.PHONY: demo test test-fast serve bench lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

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

## bench: the benchmarks, printed as tables (results also under benchmarks/results/)
bench: $(STAMP)
	$(BIN)/python -m benchmarks

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf data outputs mlruns/* benchmarks/results
