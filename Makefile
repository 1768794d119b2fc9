# Two entry points for a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install dev serve test lint weights

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

dev: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"

serve: install
	$(BIN)/unet serve

test: dev
	$(BIN)/python -m pytest -q

lint: dev
	$(BIN)/ruff check model service tests benchmarks
	$(BIN)/ruff format --check model service tests benchmarks
	$(BIN)/mypy model service

# Reproduces the shipped checkpoints in model/weights/ (CPU, about 15 minutes).
weights: install
	$(BIN)/python -m model.cli make-weights
