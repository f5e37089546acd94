# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned to the local CPU build; an unpinned torch pulls gigabytes of CUDA
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,torch,dev]' cuda-bindings
	# the stubs depend on the real tensorrt, which needs CUDA: take the stubs alone
	$(BIN)/pip install -q --no-deps tensorrt-stubs
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cyclepose_deploy.demo --out demo-out

# the tooling tests (lint-imports, mypy, a wheel build) run under `make lint`
test: $(STAMP)
	$(BIN)/python -m pytest -m "not tooling"

lint: $(STAMP)
	$(BIN)/ruff check cyclepose_deploy tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m tooling -q
