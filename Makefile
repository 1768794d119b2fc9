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

# The tests also exercise the optional extras; torch is named on the same line so that no extra
# can pull another build of it. kserve: the v2 tests through KServe's own client (it pins
# protobuf below 7, which Ray accepts; `pip check` is clean with all five).
TEST_EXTRAS := dev,ray,monai,onnx,kserve

dev: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[$(TEST_EXTRAS)]" torch==2.13.0

serve: install
	$(BIN)/unet serve

test: dev
	$(BIN)/python -m pytest -q

lint: dev
	$(BIN)/ruff check model service tests benchmarks
	$(BIN)/ruff format --check model service tests benchmarks
	$(BIN)/mypy model service

# Reproduces the shipped checkpoints in model/weights/ (CPU, about 15 minutes a model, three models).
weights: install
	$(BIN)/python -m model.cli make-weights
