# Set-up and common tasks. `make test` and `make reproduce` create the environment on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
# Benchmark splits: $OVERSPN_DATA when set, else ../shared/datasets when it exists, else a download cache.
DATA_DEFAULT := $(firstword $(abspath $(wildcard ../shared/datasets)))
export OVERSPN_DATA ?= $(DATA_DEFAULT)

.PHONY: install test test-fast lint reproduce figures bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

test: install lint
	$(BIN)/python -m pytest tests

test-fast: install lint
	$(BIN)/python -m pytest tests -m "not slow"

reproduce: install
	$(BIN)/overspn reproduce --protocol paper --out results/paper

# Every number and figure the README quotes about the paper, into docs/results/ (long, at one thread: about an hour
# for the perturbation sweep, the Gaussian studies and the dynamics, then about 25 minutes for the log protocol and
# the two optimizer comparisons; every command resumes where it stopped, and finished runs are reused).
figures: install
	$(BIN)/overspn reproduce --depth 1 --depth 3 --runs 60,20 --iterations 1200 --perturbation 1e-4,1e-8,1e-12,1e-15 \
		--budget 500 --threads 1 --no-progress --out results/sweep
	$(BIN)/overspn reproduce --leaf gaussian --runs 10 --threads 1 --no-progress --out results/gaussian
	$(BIN)/overspn reproduce --leaf gaussian --runs 10 --iterations 500 --threads 1 --no-progress \
		--out results/gaussian-500
	$(BIN)/overspn dynamics --dataset nltcs --branching 2,2,2 --out results/dynamics/nltcs-2x2x2
	$(BIN)/overspn reproduce --protocol log --threads 1 --no-progress --out results/log
	$(BIN)/overspn compare --protocol paper --threads 1 --out results/compare
	$(BIN)/overspn compare --protocol log --threads 1 --out results/compare-log
	$(BIN)/python -m overspn.studies.results --sweep results/sweep --gaussian results/gaussian \
		--gaussian results/gaussian-500 --dynamics results/dynamics/nltcs-2x2x2 --log results/log \
		--compare results/compare --compare results/compare-log --out docs/results

bench: install
	$(BIN)/python benchmarks/bench_engine.py --out benchmarks/results/engine.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
