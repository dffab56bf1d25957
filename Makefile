# IoT image-classification pipeline. `make` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STACK := deploy/local/stack.sh
# uv in its own small virtualenv: no root, no PATH or system-Python (PEP 668) assumptions.
UV := .uv/bin/uv
UV_VERSION := 0.13.9

COMPOSE_ENV ?= deploy/compose/.env
COMPOSE := docker compose -p iot-pipeline --env-file $(COMPOSE_ENV) -f deploy/compose/compose.yaml

.PHONY: help install tools run stop test test-unit lint fmt clean up down logs ps compose-env

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv .uv
	.uv/bin/pip install --quiet 'uv==$(UV_VERSION)'

$(PY): $(UV) pyproject.toml uv.lock shared/pyproject.toml services/*/pyproject.toml
	$(UV) sync --frozen --all-packages
	@touch $(PY)

install: $(PY) tools ## Install the virtualenv, Kafka jars, PouchDB Server and the test tools
	$(STACK) install

# Debian packages the tests use: a real Prometheus, and docker-compose to validate the stack.
DEBIAN_TOOLS := prometheus docker-compose
tools:
	@missing=""; for t in $(DEBIAN_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "please install (Debian/Ubuntu: sudo apt-get install$$missing); the tests need them" >&2; exit 1; fi; \
	fi

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

up: compose-env ## Docker: build the images and start the whole stack (Kafka, CouchDB, services, Prometheus, Grafana)
	$(COMPOSE) up -d --build
	@echo "Grafana http://localhost:3000 (admin / GRAFANA_ADMIN_PASSWORD), Prometheus http://localhost:9090,"
	@echo "CouchDB http://localhost:5984/_utils; images stored: curl -u admin:<COUCHDB_PASSWORD> 'http://localhost:5984/img_db/_all_docs?include_docs=true'"

down: compose-env ## Docker: stop and remove the stack (data volumes kept; `make down V=1` removes them too)
	$(COMPOSE) down $(if $(V),--volumes)

logs: compose-env ## Docker: follow the stack's logs
	$(COMPOSE) logs -f --tail=100

ps: compose-env ## Docker: list the stack's containers and their health
	$(COMPOSE) ps

compose-env:
	@test -f $(COMPOSE_ENV) || { echo "$(COMPOSE_ENV) is missing: cp deploy/compose/.env.example deploy/compose/.env and set the passwords in it" >&2; exit 1; }
