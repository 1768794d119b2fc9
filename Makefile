# Two entry points for a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install dev serve test lint weights axe

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# The tests also exercise the optional extras; torch is named on the same line so that no extra
# can pull another build of it.
TEST_EXTRAS := dev,ray,monai,onnx

dev: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[$(TEST_EXTRAS)]" torch==2.13.0

serve: install
	$(BIN)/unet serve

# axe-core for the explorer's accessibility test, pinned, from the npm registry into a git-ignored
# folder; without npm that test skips and says so.
AXE_VERSION := 4.10.3
axe:
	@if command -v npm >/dev/null 2>&1; then \
		npm install --silent --no-audit --no-fund --prefix .cache/axe axe-core@$(AXE_VERSION); \
	else echo "npm not found: the explorer's axe-core test will skip"; fi

test: dev axe
	$(BIN)/python -m pytest -q

lint: dev
	$(BIN)/ruff check model service tests benchmarks
	$(BIN)/ruff format --check model service tests benchmarks
	$(BIN)/mypy model service

# Reproduces the shipped checkpoints in model/weights/ (CPU, about 15 minutes a model, three models).
weights: install
	$(BIN)/python -m model.cli make-weights
