# IoT image-classification pipeline. `make` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STACK := deploy/local/stack.sh
# uv in its own small virtualenv: no root, no PATH or system-Python (PEP 668) assumptions.
UV := .uv/bin/uv
UV_VERSION := 0.13.9

# Compose: `docker compose` (v2) if installed, else docker-compose (v1), else podman-compose.
# COMPOSE_ENV: the settings file (a test points it elsewhere, so a user's .env is never touched).
COMPOSE_ENV ?= deploy/compose/.env
COMPOSE_DIR := deploy/compose
COMPOSE_CMD ?= $(shell if docker compose version >/dev/null 2>&1; then echo docker compose; \
  elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; \
  elif command -v podman-compose >/dev/null 2>&1; then echo podman-compose; fi)
# SECRETS_DIR: where `make up` writes the passwords Compose mounts as secrets, beside COMPOSE_ENV.
SECRETS_DIR ?= $(dir $(COMPOSE_ENV)).secrets
# `make up SECURE=1` (and down/logs/ps alike): Kafka with SASL_SSL and ACLs, compose.secure.yaml.
COMPOSE = SECRETS_DIR=$(abspath $(SECRETS_DIR)) $(COMPOSE_CMD) -p iot-pipeline --env-file $(COMPOSE_ENV) \
  -f $(COMPOSE_DIR)/compose.yaml $(if $(SECURE),-f $(COMPOSE_DIR)/compose.secure.yaml)
# `make up WEIGHTS_DIR=<folder> CIFAR_DIR=<folder>`: build from local copies (Compose v2 + BuildKit).
COMPOSE_LOCAL_DATA = $(if $(WEIGHTS_DIR),-f $(COMPOSE_DIR)/compose.weights-dir.yaml) \
  $(if $(CIFAR_DIR),-f $(COMPOSE_DIR)/compose.cifar-dir.yaml)
# make up refuses these when unset, empty or still .env.example's placeholder.
COMPOSE_SECRETS := COUCHDB_PASSWORD COUCHDB_SINK_PASSWORD COUCHDB_READER_PASSWORD GRAFANA_ADMIN_PASSWORD

.PHONY: help install tools deploy-tools run stop test test-deploy ci-fresh test-unit audit chaos bench lint fmt clean up down logs ps compose-env compose-secrets compose-secure-files compose-local-data

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv .uv
	.uv/bin/pip install --quiet 'uv==$(UV_VERSION)'

$(PY): $(UV) pyproject.toml uv.lock shared/pyproject.toml services/*/pyproject.toml
	$(UV) sync --frozen --all-packages
	@touch $(PY)

install: $(PY) tools ## Install the virtualenv, Kafka jars, CouchDB (built from source) and the test tools
	$(STACK) install

# Debian packages the tests use, as command:package: a real Prometheus and the node exporter it
# scrapes (tests/deploy/test_host_metrics.py), amtool to check the Alertmanager config,
# docker-compose to validate the stack; and for `make test-deploy` the container engines,
# mmdebstrap and a registry.
DEBIAN_TOOLS := prometheus:prometheus prometheus-node-exporter:prometheus-node-exporter \
	amtool:prometheus-alertmanager docker-compose:docker-compose
# Daemons those packages start on a machine run by systemd, on every interface: the tests run
# their own, so they are stopped and disabled right after the install.
DEBIAN_DAEMONS := prometheus prometheus-node-exporter prometheus-alertmanager
DEPLOY_TOOLS := podman:podman buildah:buildah runc:runc /usr/lib/podman/netavark:netavark \
	/usr/lib/podman/aardvark-dns:aardvark-dns mmdebstrap:mmdebstrap dockerd:docker.io \
	docker-registry:docker-registry ssh-keygen:openssh-client iptables:iptables
tools: ## Install the Debian packages `make test` needs (as root)
	@$(call apt_tools,$(DEBIAN_TOOLS))

deploy-tools: ## Install the Debian packages `make test-deploy` needs (as root)
	@$(call apt_tools,$(DEBIAN_TOOLS) $(DEPLOY_TOOLS))

define apt_tools
missing=""; for pair in $(1); do tool=$${pair%%:*}; \
  { [ -x "$$tool" ] || command -v "$$tool" >/dev/null; } || missing="$$missing $${pair#*:}"; done; \
if [ -n "$$missing" ]; then \
  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
    echo "installing Debian packages:$$missing"; \
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
    if [ -d /run/systemd/system ]; then systemctl disable --now $(DEBIAN_DAEMONS) >/dev/null 2>&1 || true; fi; \
  else echo "please install (Debian/Ubuntu: sudo apt-get install$$missing); the tests need them" >&2; exit 1; fi; \
fi
endef

run: install ## Start Kafka + CouchDB locally, run the pipeline on 6 images, leave it running
	$(STACK) start
	$(PY) deploy/local/run.py

stop: ## Stop everything `make run` started
	$(PY) deploy/local/run.py --stop || true
	$(STACK) stop

test: install lint ## Lint, start the real services, run the whole suite, stop them
	$(STACK) start
	$(PY) -m pytest tests --require-shared-data --durations=20; status=$$?; $(STACK) stop; exit $$status

# E2E_ARGS: more pytest arguments, e.g. -m "not scaled_out" (.ci/run) or -k compose.
test-deploy: install deploy-tools ## Run the deployments for real: site.yml on four, then seven systemd hosts, `make up` (root, ~90 min)
	$(PY) -m pytest tests/e2e --durations=0 $(E2E_ARGS)

ci-fresh: ## CI as on a new machine: .ci/run in a fresh clone with an empty HOME and caches (root, ~1 h)
	KEEP=$(KEEP) bash .ci/fresh

test-unit: $(PY) ## Unit tests only (no services)
	$(PY) -m pytest tests/unit

# `make audit` reads the stack `make run` started unless IOT_* settings say otherwise; AUDIT_ARGS=--json for scripts.
audit: $(PY) ## Delivery audit: is every image sent stored as one complete document? (exit 1 if not)
	IOT_COUCHDB_PASSWORD="$${IOT_COUCHDB_PASSWORD:-$${IOT_LOCAL_COUCHDB_READER_PASSWORD:-local-dev-only}}" \
	  $(VENV)/bin/iot-audit $(AUDIT_ARGS)

CHAOS_IMAGES ?= 10000
# Its own ZooKeeper, Kafka and CouchDB on free ports: the shared stack is never touched.
chaos: $(PY) ## Fault injection on a private stack (kills, broker and CouchDB outages, bad messages), then the audit
	IOT_CHAOS_IMAGES=$(CHAOS_IMAGES) $(PY) -m testbed.chaos $(CHAOS_ARGS)

BENCH_IMAGES ?= 5000
# On a private stack of its own (free ports); writes benchmarks/results/{bench.json,bench.png,bench.md}.
# BENCH_ARGS passes options to `python -m benchmarks.pipeline` (--out, --rates, --rate-seconds, --baseline-images, --smoke).
bench: $(PY) ## Benchmark: model, inference, sink, end to end, latency at 10/50/200 img/s, vs a seed-style baseline; SASL_SSL vs PLAINTEXT
	$(PY) -m benchmarks.pipeline --images $(BENCH_IMAGES) $(BENCH_ARGS)
	$(PY) -m benchmarks.kafka_security

lint: $(PY) ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(PY) ## Format and fix what ruff can
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## Stop services and remove local data
	$(STACK) clean

up: compose-env compose-secrets compose-secure-files compose-local-data ## Docker: build the images and start the stack (Kafka, CouchDB, services, Prometheus, Grafana)
	$(if $(WEIGHTS_DIR),WEIGHTS_DIR=$(abspath $(WEIGHTS_DIR))) $(if $(CIFAR_DIR),CIFAR_DIR=$(abspath $(CIFAR_DIR))) \
	  $(COMPOSE) $(COMPOSE_LOCAL_DATA) up -d --build
	@echo "Prometheus http://localhost:9090, Grafana http://localhost:3000 (admin / GRAFANA_ADMIN_PASSWORD; profile grafana),"
	@echo "CouchDB http://localhost:5984; images stored: curl -u iot_reader:<COUCHDB_READER_PASSWORD> 'http://localhost:5984/img_db/_all_docs?include_docs=true'"
	@echo "(default host ports: *_HOST_PORT in $(COMPOSE_ENV) changes them)"
	$(if $(SECURE),@echo "Kafka takes SASL_SSL logins only: CA $(SECRETS_DIR)/ca.pem; passwords $(SECRETS_DIR)/kafka_*_password; CouchDB also https://localhost:6984")

down: compose-env ## Docker: stop and remove the stack (data volumes kept; `make down V=1` removes them too)
	$(COMPOSE) down $(if $(V),--volumes)

logs: compose-env ## Docker: follow the stack's logs
	$(COMPOSE) logs -f --tail=100

ps: compose-env ## Docker: list the stack's containers and their health
	$(COMPOSE) ps

compose-env:
	@test -n "$(COMPOSE_CMD)" || { echo "no Compose found: install Docker's Compose plugin (docker compose), docker-compose or podman-compose" >&2; exit 1; }
	@test -f $(COMPOSE_ENV) || { echo "$(COMPOSE_ENV) is missing: cp deploy/compose/.env.example deploy/compose/.env and set the passwords in it" >&2; exit 1; }

# $$value: the secret $$var, from the environment as it is if set there (as in Compose itself),
# else its last line in COMPOSE_ENV, unquoted.
define secret_value
if [ -n "$${!var+set}" ]; then value="$${!var}"; \
else value="$$(sed -n "s/^[[:space:]]*$$var[[:space:]]*=[[:space:]]*//p" $(COMPOSE_ENV) | tail -n 1)"; \
  value="$${value%\"}"; value="$${value#\"}"; value="$${value%\'}"; value="$${value#\'}"; fi
endef

# Checks every secret first, then writes each to SECRETS_DIR/<name in lower case>, the file
# compose.yaml mounts: 0644 so that the containers' own users (10001, Grafana's 472) can read it
# through the bind mount, in a folder that only its owner may enter.
compose-secrets: compose-env
	@for var in $(COMPOSE_SECRETS); do \
	  $(secret_value); \
	  placeholder="$$(sed -n "s/^$$var=//p" $(COMPOSE_DIR)/.env.example)"; \
	  if [ -z "$$value" ]; then echo "$(COMPOSE_ENV): $$var is empty; set a password of your own" >&2; exit 1; fi; \
	  if [ "$$value" = "$$placeholder" ]; then \
	    echo "$(COMPOSE_ENV): $$var is still the .env.example placeholder; set a password of your own" >&2; exit 1; fi; \
	done
	@mkdir -p "$(SECRETS_DIR)" && chmod 700 "$(SECRETS_DIR)"
	@for var in $(COMPOSE_SECRETS); do \
	  $(secret_value); \
	  file="$(SECRETS_DIR)/$${var,,}"; \
	  (umask 022 && printf '%s' "$$value" > "$$file.new") && mv -f "$$file.new" "$$file"; \
	done

# SECURE=1: the CA, the broker's certificate and the Kafka logins, made on first use, then kept.
compose-secure-files:
	$(if $(SECURE),@$(COMPOSE_DIR)/secure-files.sh "$(SECRETS_DIR)")

compose-local-data:
ifneq ($(WEIGHTS_DIR)$(CIFAR_DIR),)
	@case "$(COMPOSE_CMD)" in "docker compose") ;; *) echo "WEIGHTS_DIR/CIFAR_DIR need Compose v2 (docker compose) with BuildKit;" \
	  "with $(COMPOSE_CMD), serve the files over HTTP and set WEIGHTS_URL/CIFAR_URL in $(COMPOSE_ENV) instead" >&2; exit 1;; esac
	@for dir in $(WEIGHTS_DIR) $(CIFAR_DIR); do test -d "$$dir" || { echo "$$dir is not a folder" >&2; exit 1; }; done
endif
