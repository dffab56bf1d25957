# IoT image-classification pipeline. `make` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STACK := deploy/local/stack.sh
UV := $(VENV)/bin/uv

.PHONY: help install run stop test test-unit test-integration lint fmt typecheck clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(PY): pyproject.toml uv.lock shared/pyproject.toml services/*/pyproject.toml
	@command -v uv >/dev/null || python3 -m pip install --quiet 'uv>=0.5'
	uv sync --frozen --all-packages
	@touch $(PY)

install: $(PY) ## Install the virtualenv, Kafka jars and PouchDB Server
	$(STACK) install

run: install ## Start Kafka + CouchDB-API locally, run the pipeline on 6 images, leave it running
	$(STACK) start
	$(PY) deploy/local/run.py

stop: ## Stop everything `make run` started
	$(PY) deploy/local/run.py --stop || true
	$(STACK) stop

test: install lint ## Lint, start the real services, run the whole suite, stop them
	$(STACK) start
	$(PY) -m pytest tests; status=$$?; $(STACK) stop; exit $$status

test-unit: $(PY) ## Unit tests only (no services)
	$(PY) -m pytest tests/unit

lint: $(PY) ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(PY) ## Format and fix what ruff can
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## Stop services and remove local data
	$(STACK) clean
