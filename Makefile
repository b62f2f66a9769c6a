# colbert-batch developer commands. `make demo` and `make test` set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# CPU build pinned for machines without a GPU; on GPU nodes use e.g. TORCH=torch==2.13.0
# from the CUDA index (see README, "GPU nodes").
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Datasets: ../shared/datasets when it exists (CI and dev machines), else the user cache.
SHARED_DATASETS := $(abspath ../shared/datasets)
ifneq ($(wildcard $(SHARED_DATASETS)/.),)
export COLBERT_BATCH_DATA ?= $(SHARED_DATASETS)
endif
export TOKENIZERS_PARALLELISM ?= false

DEMO_CONFIG ?= jobs/configs/scifact-demo.yaml
DEMO_OUT ?= out/demo
DEMO_DATASET ?= beir:scifact
PYTEST_ARGS ?=

.PHONY: setup demo demo-exact test test-slow test-all lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

# SciFact end to end: encode (Ray actors) -> IVF-PQ index -> Ray search actors -> metrics.
demo: $(STAMP)
	$(BIN)/colbert-batch pipeline $(DEMO_CONFIG)

# The foundation's path: exhaustive exact MaxSim over the demo's embeddings.
demo-exact: demo
	$(BIN)/colbert-batch search --exact --embeddings $(DEMO_OUT)/embeddings \
		--queries $(DEMO_DATASET) --out $(DEMO_OUT)/run-exact

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check colbert_core jobs tests bench
	$(BIN)/ruff format --check colbert_core jobs tests bench

format: $(STAMP)
	$(BIN)/ruff format colbert_core jobs tests bench
	$(BIN)/ruff check --fix colbert_core jobs tests bench

# Benchmarks (record results in bench/RESULTS.md). The PyLate and fast-plaid comparisons
# need their own virtualenvs: bench/setup_pylate_venv.sh, bench/setup_fastplaid_venv.sh.
bench: demo
	$(BIN)/python bench/encode_throughput.py --limit 1000 --modes single,ray1,ray2,pylate
	$(BIN)/python bench/index_build.py --embeddings $(DEMO_OUT)/embeddings \
		--types flat,ivfpq,hnsw --work-dir out/bench/scifact
	$(BIN)/python bench/search_compare.py --embeddings $(DEMO_OUT)/embeddings \
		--indexes out/bench/scifact/idx-embeddings-ivfpq,out/bench/scifact/idx-embeddings-hnsw \
		--max-candidates 256,128 $(if $(wildcard bench/.venv-fastplaid/bin/python),\
		--fastplaid-index out/bench/fastplaid-scifact --fastplaid-build)

clean:
	rm -rf out .pytest_cache .ruff_cache
