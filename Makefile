# Two entry points for a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install dev serve test lint weights axe lock pin-base-image check-deploy

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# The tests also exercise the optional extras; torch is named on the same line so that no extra
# can pull another build of it. kserve: the v2 tests through KServe's own client (it pins
# protobuf below 7, which Ray accepts; `pip check` is clean with all of them).
TEST_EXTRAS := dev,ray,monai,onnx,otel,kserve

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
	$(BIN)/ruff check model service tests benchmarks deploy
	$(BIN)/ruff format --check model service tests benchmarks deploy
	$(BIN)/mypy model service

# Reproduces the shipped checkpoints in model/weights/ (CPU, about 15 minutes a model, three models).
weights: install
	$(BIN)/python -m model.cli make-weights

# deploy/requirements.lock: the image's dependencies with their hashes, resolved by pip from the
# package index (deploy/lock.py says how); rerun after changing pyproject.toml's dependencies.
lock: $(BIN)/python
	$(BIN)/pip install --dry-run --ignore-installed --quiet --report .lock-report.json \
		".[postgres]" torch==2.13.0
	$(BIN)/python deploy/lock.py .lock-report.json > deploy/requirements.lock
	rm -f .lock-report.json

# Pins the Dockerfile's base image to the current digest of its tag (needs docker and the
# registry); commit the result and rerun it to take the base image's security updates.
BASE_TAG := python:3.11-slim
pin-base-image:
	digest=$$(docker buildx imagetools inspect $(BASE_TAG) --format '{{.Manifest.Digest}}') && \
		sed -i "s|^ARG BASE_IMAGE=.*|ARG BASE_IMAGE=$(BASE_TAG)@$$digest|" Dockerfile
	grep '^ARG BASE_IMAGE=' Dockerfile

# The deployment files, offline: alert rules (promtool) and the Kubernetes manifests.
check-deploy: dev
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts.test.yml
	$(BIN)/python deploy/kubernetes/validate.py
