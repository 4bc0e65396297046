# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv.
# CONSTRAINTS pins torch to the local CPU wheel on CPU-only machines; on a GPU machine run
# `make demo CONSTRAINTS=` (or install charlab with pip yourself) to let pip choose torch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints.txt
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
DEMO_OUT ?= runs/demo

.PHONY: demo test lint install install-dev bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install -q $(PIP_CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install -q $(PIP_CONSTRAINTS) -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/charlab models fetch builtin:smollm2-135m
	$(BIN)/charlab study run studies/demo.yaml --out $(DEMO_OUT)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_generation.py

clean-venv:
	rm -rf $(VENV)
