# Set-up and common tasks. `make test` and `make reproduce` create the environment on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
# Benchmark splits: $OVERSPN_DATA when set, else ../shared/datasets when it exists, else a download cache.
DATA_DEFAULT := $(firstword $(abspath $(wildcard ../shared/datasets)))
export OVERSPN_DATA ?= $(DATA_DEFAULT)

.PHONY: install test lint reproduce bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

lint: install
	$(BIN)/ruff check src tests benchmarks

test: install lint
	$(BIN)/python -m pytest tests

reproduce: install
	$(BIN)/overspn reproduce --protocol paper --out results/paper

bench: install
	$(BIN)/python benchmarks/bench_paper_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
