"""Ansible deployment to VM1-VM4 (`deploy/ansible`), checked without any VM.

- `ansible-lint` (production profile) and `ansible-playbook --syntax-check` pass;
- site.yml run against the example inventory in render-only mode (`-e iot_render_only=true`):
  every role writes the files it would install into `<render dir>/<host>/<path on the VM>`
  on this machine (no SSH, no root, no network), and the tests check what would otherwise
  only fail on real VMs: addresses, every service setting, secrets, firewall ports.

Secrets: a service's secret setting is a file of its own in `/etc/iot/<name>/secrets/` (mode
0400, the container's user only, mounted at /run/secrets), and so are Grafana's and
Prometheus's (`/etc/iot/<grafana|prometheus>/secrets/`); CouchDB's are in `secrets.env` (0600,
`docker run --env-file`); the Kafka admin's is in the broker's
`server.properties` and `admin.properties`. No other rendered file, nor Ansible's output, has one.

The main render sets `iot_controller_address` (in a real run each VM reads it from Ansible's SSH
connection), so the admin ports have a source; other renders change settings that do not touch
each other.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AclOperation, ResourceType  # type: ignore[attr-defined]
from passlib.hash import bcrypt  # type: ignore[import-untyped]

from iot_inference.settings import InferenceSettings
from iot_producer.settings import ProducerSettings
from iot_shared.access import AccessSettings, Grant, grants
from iot_shared.settings import ServiceSettings, env_name, load_settings
from iot_sink import couch_setup
from iot_sink.settings import SinkSettings

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "deploy" / "ansible"
INVENTORY = ANSIBLE / "inventory.example.ini"
SITE = ANSIBLE / "site.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "iot-pipeline.json"
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
CONTROLLER = "198.51.100.7"  # RFC 5737 documentation address

SERVICES: dict[str, tuple[type[ServiceSettings], int]] = {
    "producer": (ProducerSettings, 8001),
    "inference": (InferenceSettings, 8002),
    "sink": (SinkSettings, 8003),
}
COMMON_SETTINGS = {
    "IOT_KAFKA_BOOTSTRAP_SERVERS",
    "IOT_IMAGES_TOPIC",
    "IOT_PREDICTIONS_TOPIC",
    "IOT_DLQ_TOPIC",
    "IOT_METRICS_PORT",
    "IOT_LOG_LEVEL",
}
# What each service must be given explicitly on a VM (the rest keeps the code's defaults).
NEEDED_SETTINGS = {
    "producer": COMMON_SETTINGS | {"IOT_COUNT", "IOT_INTERVAL_SECONDS"},
    "inference": COMMON_SETTINGS | {"IOT_GROUP_ID", "IOT_MAX_BATCH", "IOT_MAX_WAIT_MS"},
    "sink": COMMON_SETTINGS
    | {"IOT_GROUP_ID", "IOT_COUCHDB_URL", "IOT_COUCHDB_USER", "IOT_COUCHDB_DB", "IOT_COUCHDB_PASSWORD"},
}
SECRET_SETTINGS = {"IOT_COUCHDB_PASSWORD", "IOT_KAFKA_PASSWORD", "IOT_KAFKA_EXTRA_CONFIG"}


def tool(name: str) -> str:
    """A dev tool from this virtualenv (or PATH); a clear failure, never a skip, when missing."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        pytest.fail(
            f"`{name}` is not installed: it is a dev dependency (ansible-core, ansible-lint); "
            "run `uv sync --frozen --all-packages` (or `make install`)",
            pytrace=False,
        )
    return found


def run(args: list[str], home: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_HOME": str(home),  # keep ~/.ansible out of it
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "NO_COLOR": "1",
        "PY_COLORS": "0",
    }
    env.pop("ANSIBLE_CONFIG", None)
    env.pop("ANSIBLE_VAULT_PASSWORD_FILE", None)
    return subprocess.run(
        args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a file the way `docker run --env-file` does: KEY=VALUE lines, # comments."""
    env = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        env[key] = value
    return env


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


@dataclass(frozen=True)
class Inventory:
    groups: dict[str, list[str]]
    addresses: dict[str, str]  # host -> iot_address

    def address(self, group: str) -> str:
        hosts = self.groups[group]
        assert len(hosts) == 1, f"{group}: {hosts}"
        return self.addresses[hosts[0]]

    def host(self, group: str) -> str:
        return self.groups[group][0]


@pytest.fixture(scope="module")
def inventory(ansible_home: Path) -> Inventory:
    result = run([tool("ansible-inventory"), "-i", str(INVENTORY), "--list"], ansible_home)
    assert result.returncode == 0, output(result)
    data = json.loads(result.stdout)

    def hosts(group: str) -> list[str]:
        entry = data.get(group, {})
        found = list(entry.get("hosts", []))
        for child in entry.get("children", []):
            found += hosts(child)
        return found

    groups = {g: hosts(g) for g in ("producer", "broker", "inference", "sink", "couchdb", "monitoring")}
    hostvars = data["_meta"]["hostvars"]
    addresses = {h: hostvars[h].get("iot_address", hostvars[h]["ansible_host"]) for h in hostvars}
    # The example must tell the SSH address and the address the VMs use apart, or the checks
    # below could not notice one used in place of the other.
    assert all(hostvars[h]["iot_address"] != hostvars[h]["ansible_host"] for h in hostvars)
    return Inventory(groups, addresses)


@dataclass(frozen=True)
class Secrets:
    couchdb: str
    couchdb_sink: str
    couchdb_reader: str
    grafana: str
    prometheus: str
    kafka: str  # in IOT_KAFKA_EXTRA_CONFIG
    kafka_admin: str
    kafka_producer: str
    kafka_inference: str
    kafka_sink: str
    kafka_audit: str

    @property
    def extra_vars(self) -> dict[str, Any]:
        return {
            "vault_couchdb_admin_password": self.couchdb,
            "vault_couchdb_sink_password": self.couchdb_sink,
            "vault_couchdb_reader_password": self.couchdb_reader,
            "vault_grafana_admin_password": self.grafana,
            "vault_prometheus_password": self.prometheus,
            "vault_kafka_admin_password": self.kafka_admin,
            "vault_kafka_producer_password": self.kafka_producer,
            "vault_kafka_inference_password": self.kafka_inference,
            "vault_kafka_sink_password": self.kafka_sink,
            "vault_kafka_audit_password": self.kafka_audit,
            "vault_kafka_extra_config": {"ssl.key.password": self.kafka},
        }

    def all(self) -> dict[str, str]:
        return {
            "couchdb": self.couchdb,
            "couchdb_sink": self.couchdb_sink,
            "couchdb_reader": self.couchdb_reader,
            "grafana": self.grafana,
            "prometheus": self.prometheus,
            "kafka": self.kafka,
            "kafka_admin": self.kafka_admin,
            "kafka_producer": self.kafka_producer,
            "kafka_inference": self.kafka_inference,
            "kafka_sink": self.kafka_sink,
            "kafka_audit": self.kafka_audit,
        }


@dataclass(frozen=True)
class Render:
    root: Path
    log: str

    def host(self, name: str) -> Path:
        return self.root / name

    def file(self, host: str, path: str) -> Path:
        found = self.root / host / path.lstrip("/")
        assert found.is_file(), f"{host} would not get {path}; rendered: {sorted(self.files(host))}"
        return found

    def files(self, host: str) -> set[str]:
        base = self.root / host
        return {"/" + str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()}


def render_site(
    home: Path, out: Path, extra_vars: dict[str, Any], *more: str, inventory: Path = INVENTORY
) -> subprocess.CompletedProcess[str]:
    return run(
        [
            tool("ansible-playbook"),
            "-i",
            str(inventory),
            str(SITE),
            "-e",
            json.dumps({"iot_render_only": True, "iot_render_dir": str(out), **extra_vars}),
            *more,
        ],
        home,
    )


@pytest.fixture(scope="module")
def secret_values() -> Secrets:
    return Secrets(
        couchdb=f"couch-{secrets.token_hex(12)}",
        couchdb_sink=f"couch-sink-{secrets.token_hex(12)}",
        couchdb_reader=f"couch-reader-{secrets.token_hex(12)}",
        grafana=f"grafana-{secrets.token_hex(12)}",
        prometheus=f"prometheus-{secrets.token_hex(12)}",
        kafka=f"kafka-{secrets.token_hex(12)}",
        **{
            f"kafka_{user}": f"kafka-{user}-{secrets.token_hex(12)}"
            for user in ("admin", "producer", "inference", "sink", "audit")
        },
    )


@pytest.fixture(scope="module")
def rendered(ansible_home: Path, tmp_path_factory: pytest.TempPathFactory, secret_values: Secrets) -> Render:
    out = tmp_path_factory.mktemp("render")
    result = render_site(
        ansible_home, out, {**secret_values.extra_vars, "iot_controller_address": CONTROLLER}
    )
    assert result.returncode == 0, output(result)
    return Render(out, result.stdout + result.stderr)


def render_limited(home: Path, out: Path, extra_vars: dict[str, Any], limit: str) -> Render:
    result = render_site(home, out, extra_vars, "--limit", limit)
    assert result.returncode == 0, output(result)
    return Render(out, result.stdout + result.stderr)


REGISTRY = "10.89.0.1:5000"  # a local registry over plain HTTP, as the deployment test uses
VARIED = {
    "iot_producer_count": 7,
    "monitoring_grafana_enabled": False,
    "iot_admin_extra_sources": ["192.0.2.0/24"],
    "docker_insecure_registries": [REGISTRY],
    "couchdb_image": f"{REGISTRY}/standins/couchdb:3.5.0",
    "monitoring_prometheus_image": f"{REGISTRY}/standins/prometheus:v3.1.0",
    "iot_couchdb_tls": False,
    # Alertmanager's receivers: a webhook with a token, and e-mail with an SMTP login.
    "monitoring_alert_webhook_url": "https://hooks.example.com/iot",
    "vault_alert_webhook_token": "webhook-token-4d1f",
    "monitoring_alert_email_to": "oncall@example.com",
    "monitoring_alert_smtp_smarthost": "smtp.example.com:587",
    "monitoring_alert_smtp_from": "alertmanager@example.com",
    "monitoring_alert_smtp_username": "alertmanager@example.com",
    "vault_alert_smtp_password": "smtp-password-8e2a",
}


@pytest.fixture(scope="module")
def varied(ansible_home: Path, tmp_path_factory: pytest.TempPathFactory, secret_values: Secrets) -> Render:
    """VM1 and VM4 rendered with VARIED (settings that do not touch each other), and without a
    Grafana password: with Grafana off none is needed."""
    extra = {k: v for k, v in secret_values.extra_vars.items() if k != "vault_grafana_admin_password"}
    return render_limited(
        ansible_home,
        tmp_path_factory.mktemp("varied"),
        {**extra, "iot_controller_address": CONTROLLER, **VARIED},
        "producer,sink",
    )


def exec_starts(unit: str) -> list[list[str]]:
    """Each ExecStart= of a systemd unit as words (continuation lines joined, quotes removed)."""
    return [
        shlex.split(m.group(1).replace("\\\n", " "))
        for m in re.finditer(r"^ExecStart=(.*?)(?<!\\)$", unit, re.M | re.S)
    ]


# --- static checks -----------------------------------------------------------------------


def test_ansible_lint_production_profile_is_clean(ansible_home: Path) -> None:
    result = run(
        [tool("ansible-lint"), "--profile", "production", "-c", str(ANSIBLE / ".ansible-lint"), str(ANSIBLE)],
        ansible_home,
        timeout=300,
    )
    assert result.returncode == 0, output(result)


def test_site_passes_the_syntax_check(ansible_home: Path) -> None:
    result = run([tool("ansible-playbook"), "--syntax-check", "-i", str(INVENTORY), str(SITE)], ansible_home)
    assert result.returncode == 0, output(result)


def test_every_role_has_the_standard_layout() -> None:
    roles = {
        "java",
        "kafka",
        "docker",
        "couchdb",
        "service",
        "monitoring",
        "firewall",
        "pki",
        "node_exporter",
    }
    # `render` deploys nothing: the other roles include it in render-only mode, with their templates.
    helpers = {"render"}
    assert {p.name for p in (ANSIBLE / "roles").iterdir() if p.is_dir()} == roles | helpers
    for part in ("defaults/main.yml", "tasks/main.yml", "meta/main.yml", "README.md"):
        assert (ANSIBLE / "roles" / "render" / part).is_file(), f"role render lacks {part}"
    for role in roles:
        for part in (
            "defaults/main.yml",
            "tasks/main.yml",
            "handlers/main.yml",
            "meta/main.yml",
            "README.md",
        ):
            assert (ANSIBLE / "roles" / role / part).is_file(), f"role {role} lacks {part}"
        assert any((ANSIBLE / "roles" / role / "templates").iterdir()), f"role {role} has no template"


def test_example_vault_holds_only_placeholders() -> None:
    example = yaml.safe_load((ANSIBLE / "group_vars" / "all" / "vault.example.yml").read_text())
    assert example["vault_couchdb_admin_password"].startswith("CHANGE-ME")
    assert example["vault_grafana_admin_password"].startswith("CHANGE-ME")
    assert example["vault_prometheus_password"].startswith("CHANGE-ME")
    assert example["vault_kafka_extra_config"] == {}
    ignored = (ANSIBLE / ".gitignore").read_text().split()
    assert "/group_vars/all/vault.yml" in ignored and "/inventory.ini" in ignored


def test_placeholder_secrets_stop_the_deployment(ansible_home: Path, tmp_path: Path) -> None:
    result = render_site(ansible_home, tmp_path, {})  # only the example vault's placeholders
    assert result.returncode != 0, output(result)
    assert "vault.example.yml" in result.stdout, output(result)
    assert not any(tmp_path.iterdir()), "nothing may be rendered before the secrets check"


@pytest.mark.parametrize("password", ["with,comma", "with=equals", "with space", "[bracketed]"])
def test_a_kafka_password_its_tools_cannot_take_is_refused(
    ansible_home: Path, tmp_path: Path, secret_values: Secrets, password: str
) -> None:
    extra = {**secret_values.extra_vars, "vault_kafka_sink_password": password}
    result = render_site(ansible_home, tmp_path, extra)
    assert result.returncode != 0 and "Kafka's tools cannot take" in result.stdout, output(result)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("password", "refusal"),
    [("CHANGE-ME-prometheus-password", "still placeholders"), ("with$dollar", 'no "$"')],
)
def test_a_prometheus_password_that_is_a_placeholder_or_has_a_dollar_is_refused(
    ansible_home: Path, tmp_path: Path, secret_values: Secrets, password: str, refusal: str
) -> None:
    """Grafana's data source would expand a "$" in it as a variable."""
    extra = {**secret_values.extra_vars, "vault_prometheus_password": password}
    result = render_site(ansible_home, tmp_path, extra, "--limit", "monitoring", "--tags", "monitoring")
    assert result.returncode != 0 and refusal in result.stdout, output(result)
    assert not list(tmp_path.rglob("prometheus.yml"))


@pytest.mark.parametrize(
    ("content", "allowed", "refused"),
    [
        ("vault_couchdb_admin_password: in-clear\n", False, True),
        ("vault_couchdb_admin_password: in-clear\n", True, False),
        ("$ANSIBLE_VAULT;1.1;AES256\n6132\n", False, False),
    ],
)
def test_a_vault_file_that_is_not_encrypted_is_refused_unless_a_test_allows_it(
    ansible_home: Path, tmp_path: Path, secret_values: Secrets, content: str, allowed: bool, refused: bool
) -> None:
    vault = tmp_path / "vault.yml"
    vault.write_text(content)
    extra = {
        **secret_values.extra_vars,
        "iot_vault_file": str(vault),
        "iot_allow_plaintext_vault_for_tests": allowed,
    }
    result = render_site(
        ansible_home, tmp_path / "render", extra, "--limit", "producer", "--tags", "firewall"
    )
    assert (result.returncode != 0) == refused, output(result)
    assert ("is not encrypted" in result.stdout) == refused, output(result)


# --- what each VM would get --------------------------------------------------------------


def test_each_vm_gets_exactly_its_roles_files(rendered: Render, inventory: Inventory) -> None:
    common = {
        "/etc/iot/firewall.nft",
        "/etc/systemd/system/iot-firewall.service",
        "/etc/default/prometheus-node-exporter",
    }
    docker = {"/etc/docker/daemon.json"}
    watchdog = "/usr/local/lib/iot/iot-watchdog.py"

    def service(name: str) -> set[str]:
        secrets = ["iot_kafka_password", "iot_kafka_extra_config"] + (
            ["iot_couchdb_password"] if name == "sink" else []
        )
        # The long-running ones get a watchdog (the producer runs once).
        watched = (
            {watchdog, *(f"/etc/systemd/system/iot-{name}-watchdog.{unit}" for unit in ("service", "timer"))}
            if name != "producer"
            else set()
        )
        return {
            f"/etc/iot/{name}/{name}.env",
            f"/etc/systemd/system/iot-{name}.service",
            *(f"/etc/iot/{name}/secrets/{secret}" for secret in secrets),
        } | watched

    expected = {
        inventory.host("producer"): common | docker | service("producer"),
        inventory.host("broker"): common
        | {
            "/etc/kafka/server.properties",
            "/etc/kafka/kafka-log4j.properties",
            "/etc/kafka/zookeeper.properties",
            "/etc/kafka/zookeeper-log4j.properties",
            "/etc/kafka/tools-log4j.properties",
            "/etc/kafka/admin.properties",
            "/var/lib/zookeeper/.iot-acls.yml",
            "/etc/systemd/system/kafka.service",
            "/etc/systemd/system/zookeeper.service",
            "/var/lib/zookeeper/myid",
            "/etc/kafka/jmx-exporter.yml",
        },
        inventory.host("inference"): common | docker | service("inference"),
        inventory.host("sink"): common
        | docker
        | service("sink")
        | {
            "/etc/iot/couchdb/secrets.env",
            "/etc/iot/couchdb/couchdb.ini",
            "/etc/systemd/system/couchdb.service",
            "/etc/iot/prometheus/prometheus.yml",
            "/etc/iot/prometheus/rules/alerts.yml",
            "/etc/iot/prometheus/secrets/web.yml",
            "/etc/iot/prometheus/secrets/password",
            "/etc/iot/grafana/grafana.env",
            "/etc/iot/grafana/secrets/admin_password",
            "/etc/iot/grafana/secrets/prometheus_password",
            "/etc/iot/grafana/provisioning/datasources/prometheus.yml",
            "/etc/iot/grafana/provisioning/dashboards/iot-pipeline.yml",
            "/etc/iot/grafana/dashboards/iot-pipeline.json",
            "/etc/systemd/system/prometheus.service",
            "/etc/systemd/system/grafana.service",
            "/etc/iot/alertmanager/alertmanager.yml",
            "/etc/iot/alertmanager/secrets/web.yml",
            "/etc/systemd/system/alertmanager.service",
        },
    }
    assert {p.name for p in rendered.root.iterdir()} == set(expected)
    for host, files in expected.items():
        assert rendered.files(host) == files, host


def test_kafka_advertises_and_connects_to_zookeeper_on_the_broker_address(
    rendered: Render, inventory: Inventory
) -> None:
    broker = inventory.address("broker")
    props = read_properties(rendered.file(inventory.host("broker"), "/etc/kafka/server.properties"))
    assert props["advertised.listeners"] == f"SASL_SSL://{broker}:9092"
    # ZooKeeper beside a single broker listens on loopback only.
    assert props["zookeeper.connect"] == "127.0.0.1:2181"
    # One broker: one copy of everything, and never an unclean leader.
    assert props["broker.id"] == "1"
    assert props["default.replication.factor"] == props["offsets.topic.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1" and props["unclean.leader.election.enable"] == "false"
    assert props["listeners"] == f"SASL_SSL://{broker}:9092"
    assert props["log.dirs"] == "/var/lib/kafka/data"
    zk = read_properties(rendered.file(inventory.host("broker"), "/etc/kafka/zookeeper.properties"))
    assert zk["clientPort"] == "2181"
    assert zk["clientPortAddress"] == "127.0.0.1"
    assert zk["admin.enableServer"] == "false"


def test_kafka_and_zookeeper_run_as_systemd_units_under_a_dedicated_user(
    rendered: Render, inventory: Inventory
) -> None:
    broker = inventory.host("broker")
    kafka = rendered.file(broker, "/etc/systemd/system/kafka.service").read_text()
    zookeeper = rendered.file(broker, "/etc/systemd/system/zookeeper.service").read_text()
    for unit in (kafka, zookeeper):
        assert "\nUser=kafka\n" in unit and "\nGroup=kafka\n" in unit
    assert "Requires=zookeeper.service" in kafka and "After=zookeeper.service" in kafka


@pytest.mark.parametrize(
    ("unit", "main_class", "config", "log4j"),
    [
        ("kafka", "kafka.Kafka", "server.properties", "kafka-log4j.properties"),
        ("zookeeper", "org.apache.zookeeper.server.quorum.QuorumPeerMain", "zookeeper.properties",
         "zookeeper-log4j.properties"),
    ],
)  # fmt: skip
def test_kafka_units_run_java_on_the_release_jars_without_its_scripts(
    rendered: Render, inventory: Inventory, unit: str, main_class: str, config: str, log4j: str
) -> None:
    """Only the release's libs/ is used: an archive without bin/ (one made from Maven's jars) runs too."""
    text = rendered.file(inventory.host("broker"), f"/etc/systemd/system/{unit}.service").read_text()
    (command,) = exec_starts(text)
    assert "/opt/kafka/bin" not in text and not [word for word in command if word.endswith(".sh")]
    assert command[0] == "/usr/bin/java"
    # systemd passes the wildcard on unexpanded, and java expands it.
    assert command[command.index("-cp") + 1] == "/opt/kafka/libs/*"
    assert command[-2:] == [main_class, f"/etc/kafka/{config}"]
    assert f"-Dlog4j.configuration=file:/etc/kafka/{log4j}" in command
    assert {"$KAFKA_HEAP_OPTS", "$KAFKA_JVM_OPTS"} <= set(command)
    assert re.search(r'^Environment="KAFKA_HEAP_OPTS=-Xms\S+ -Xmx\S+"$', text, re.M), text


def log4j_files(properties: dict[str, str]) -> set[str]:
    return {value for key, value in properties.items() if key.endswith(".File")}


def test_zookeeper_and_kafka_log_to_their_own_files(rendered: Render, inventory: Inventory) -> None:
    broker = inventory.host("broker")
    kafka = read_properties(rendered.file(broker, "/etc/kafka/kafka-log4j.properties"))
    zookeeper = read_properties(rendered.file(broker, "/etc/kafka/zookeeper-log4j.properties"))
    assert "/var/log/kafka/server.log" in log4j_files(kafka)
    assert log4j_files(zookeeper) == {"/var/log/kafka/zookeeper.log"}
    assert not log4j_files(kafka) & log4j_files(zookeeper)
    for props in (kafka, zookeeper):
        # Files roll: nothing grows without bound. The journal gets warnings and errors.
        appenders = {key.split(".")[2] for key in props if key.endswith(".File")}
        assert all(props[f"log4j.appender.{a}"] == "org.apache.log4j.RollingFileAppender" for a in appenders)
        assert props["log4j.appender.console"] == "org.apache.log4j.ConsoleAppender"
    tools = read_properties(rendered.file(broker, "/etc/kafka/tools-log4j.properties"))
    assert tools["log4j.appender.stderr.Target"] == "System.err", "tool output on stdout is parsed"


def test_kraft_mode_runs_kafka_4_without_zookeeper_on_the_broker_address(
    ansible_home: Path, tmp_path: Path, inventory: Inventory, secret_values: Secrets
) -> None:
    result = render_site(
        ansible_home, tmp_path, {**secret_values.extra_vars, "iot_kafka_mode": "kraft"}, "--limit", "broker"
    )
    assert result.returncode == 0, output(result)
    broker, host = inventory.address("broker"), inventory.host("broker")
    render = Render(tmp_path, "")
    assert not any("zookeeper" in f for f in render.files(host)), render.files(host)
    props = read_properties(render.file(host, "/etc/kafka/server.properties"))
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == f"1@{broker}:9093"
    assert props["advertised.listeners"] == f"SASL_SSL://{broker}:9092"
    assert "zookeeper.connect" not in props
    # The controllers talk mutual TLS; each broker's certificate is a super user.
    assert props["listener.security.protocol.map"] == "CONTROLLER:SSL,SASL_SSL:SASL_SSL"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["super.users"] == f"User:admin;User:CN={host}"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    unit = render.file(host, "/etc/systemd/system/kafka.service").read_text()
    assert "zookeeper" not in unit and "Apache Kafka 4." in unit
    command = exec_starts(unit)[0]
    assert command[-2:] == ["kafka.Kafka", "/etc/kafka/server.properties"]
    # Kafka 4 logs with log4j 2, to the same files.
    assert "-Dlog4j2.configurationFile=/etc/kafka/kafka-log4j2.properties" in command
    log4j2 = read_properties(render.file(host, "/etc/kafka/kafka-log4j2.properties"))
    assert log4j2["appender.server.fileName"] == "/var/log/kafka/server.log"
    assert (
        read_properties(render.file(host, "/etc/kafka/tools-log4j2.properties"))["appender.stderr.target"]
        == "SYSTEM_ERR"
    )


def service_env(rendered: Render, inventory: Inventory, name: str) -> tuple[dict[str, str], dict[str, str]]:
    host = inventory.host(name)
    public = read_env_file(rendered.file(host, f"/etc/iot/{name}/{name}.env"))
    folder = rendered.root / host / f"etc/iot/{name}/secrets"
    secret = {path.name.upper(): path.read_text() for path in folder.iterdir()}
    return public, secret


def test_readiness_waits_ask_the_services_where_they_listen() -> None:
    """The services' port listens on the VM's own address (IOT_METRICS_ADDRESS), not on
    loopback: a wait that asks 127.0.0.1 never gets an answer and stops the deployment."""
    waits = [
        task["ansible.builtin.uri"]["url"]
        for play in yaml.safe_load(SITE.read_text())
        for task in play.get("pre_tasks", []) + play.get("tasks", [])
        if "ansible.builtin.uri" in task and "readyz" in task["ansible.builtin.uri"]["url"]
    ]
    defaults = yaml.safe_load((ANSIBLE / "roles/service/defaults/main.yml").read_text())
    waits.append(defaults["service_ready_url"])
    assert len(waits) >= 2 and all("iot_address" in url and "127.0.0.1" not in url for url in waits), waits


@pytest.mark.parametrize("name", SERVICES)
def test_services_use_the_broker_and_couchdb_addresses(
    rendered: Render, inventory: Inventory, name: str
) -> None:
    public, _ = service_env(rendered, inventory, name)
    assert public["IOT_KAFKA_BOOTSTRAP_SERVERS"] == f"{inventory.address('broker')}:9092"
    # Its metrics and health port on the VM's own address only, not on every interface.
    assert public["IOT_METRICS_ADDRESS"] == inventory.address(name)
    if name == "sink":
        # CouchDB's own TLS port, checked against the deployment's CA.
        assert public["IOT_COUCHDB_URL"] == f"https://{inventory.address('couchdb')}:6984"
        assert public["IOT_COUCHDB_CA_FILE"] == "/etc/iot/tls/ca.pem"


@pytest.mark.parametrize("name", SERVICES)
def test_every_setting_a_service_needs_is_set_and_valid(
    rendered: Render,
    inventory: Inventory,
    secret_values: Secrets,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cls, port = SERVICES[name]
    public, secret = service_env(rendered, inventory, name)
    assert not set(public) & set(secret), "a setting is in both files"
    env = {**public, **secret}
    missing = NEEDED_SETTINGS[name] - set(env)
    assert not missing, f"{name} would start without {sorted(missing)}"
    known = {env_name(field) for field in cls.model_fields}
    assert set(env) <= known, f"{name} gets settings it does not read: {sorted(set(env) - known)}"
    assert set(secret) <= SECRET_SETTINGS, f"not a secret: {sorted(set(secret) - SECRET_SETTINGS)}"
    assert not set(public) & SECRET_SETTINGS, (
        f"secret outside the secret files: {sorted(set(public) & SECRET_SETTINGS)}"
    )
    # The CA the brokers' certificates chain to is mounted at this path (the real one is on the VM).
    assert env["IOT_KAFKA_CA_FILE"] == "/etc/iot/tls/ca.pem"
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env["IOT_KAFKA_CA_FILE"] = str(ca)
    if "IOT_COUCHDB_CA_FILE" in env:
        env["IOT_COUCHDB_CA_FILE"] = str(ca)

    # The service itself accepts them (the same validation it runs at start-up).
    for key in [k for k in os.environ if k.startswith("IOT_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(cls, [])
    assert settings.metrics_port == port
    assert settings.kafka_bootstrap_servers == f"{inventory.address('broker')}:9092"
    assert (settings.images_topic, settings.predictions_topic, settings.dlq_topic) == (
        "iot-topic",
        "iot-predictions",
        "iot-dlq",
    )
    assert settings.kafka_extra()["ssl.key.password"] == secret_values.kafka
    # Its own Kafka user, over SASL_SSL.
    assert (settings.kafka_security_protocol, settings.kafka_username) == ("SASL_SSL", f"iot-{name}")
    assert settings.kafka_password.get_secret_value() == secret_values.all()[f"kafka_{name}"]
    if isinstance(settings, ProducerSettings):
        assert settings.count == 6 and settings.seconds_between_images == 10.0
    if isinstance(settings, SinkSettings):
        assert settings.couchdb_url == f"https://{inventory.address('couchdb')}:6984"
        # A member of img_db that roles/couchdb makes, never the server admin.
        assert settings.couchdb_password.get_secret_value() == secret_values.couchdb_sink
        assert (settings.couchdb_user, settings.couchdb_db, settings.group_id) == (
            "iot_sink",
            "img_db",
            "sink",
        )
    if isinstance(settings, InferenceSettings):
        assert settings.group_id == "inference"


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_container_gets_its_env_files(rendered: Render, inventory: Inventory, name: str) -> None:
    unit = rendered.file(inventory.host(name), f"/etc/systemd/system/iot-{name}.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*?)(?<!\\)$", unit, re.M | re.S)
    assert exec_start, unit
    command = exec_start.group(1).replace("\\\n", " ").split()
    assert command[:3] == ["/usr/bin/docker", "run", "--rm"]
    assert f"--env-file /etc/iot/{name}/{name}.env" in " ".join(command)
    assert f"--volume /etc/iot/{name}/secrets:/run/secrets:ro" in " ".join(command)
    assert "--volume /etc/iot/tls:/etc/iot/tls:ro" in " ".join(command)
    assert "--env-file /etc/iot/secrets.env" not in " ".join(command)
    # Hardened: no capability, no privilege by exec, a read-only root, bounded memory and processes.
    for flag in ("--cap-drop ALL", "--security-opt no-new-privileges", "--read-only", "--pids-limit 256"):
        assert flag in " ".join(command), flag
    memory = command[command.index("--memory") + 1]
    assert memory == {"producer": "384m", "inference": "1536m", "sink": "384m"}[name]
    assert "--network host" in " ".join(command)
    assert re.fullmatch(rf"iot-{name}:[0-9a-f]{{12}}", command[-1]), command[-1]
    assert "Requires=docker.service" in unit
    assert ("RemainAfterExit=yes" in unit) == (name == "producer")


def producer_marker(unit: str) -> str:
    """The done-marker the producer's unit writes after a successful run (its last ExecStart)."""
    last = exec_starts(unit)[-1]
    assert last[0] == "/usr/bin/touch" and len(last) == 2, last
    assert re.fullmatch(r"/var/lib/iot/producer/done-[0-9a-f]{16}", last[1]), last
    return last[1]


def test_producer_runs_once_and_is_not_started_at_boot(rendered: Render, inventory: Inventory) -> None:
    """A oneshot: a reboot does not start it (the role never enables it), `systemctl start` sends
    again, and the marker of a successful run keeps later deploys from starting it again."""
    unit = rendered.file(inventory.host("producer"), "/etc/systemd/system/iot-producer.service").read_text()
    assert "\nType=oneshot\n" in unit and "\nRemainAfterExit=yes\n" in unit
    assert "\nRestart=" not in unit
    assert "\nStateDirectory=iot/producer\n" in unit
    run, touch = exec_starts(unit)
    assert run[:2] == ["/usr/bin/docker", "run"]
    assert touch == ["/usr/bin/touch", producer_marker(unit)]
    # Not the marker's condition: started by hand, it runs again.
    assert "Condition" not in unit
    for name in ("inference", "sink"):
        other = rendered.file(inventory.host(name), f"/etc/systemd/system/iot-{name}.service").read_text()
        assert "\nType=exec\n" in other and "\nRestart=always\n" in other and "done-" not in other
    # What render-only mode cannot show, from the role itself: nothing enables a one-shot unit.
    role = ANSIBLE / "roles" / "service"
    steps = [
        step["ansible.builtin.systemd_service"] | {"when": step.get("when")}
        for path in (role / "tasks" / "deploy.yml", role / "handlers" / "main.yml")
        for step in yaml.safe_load(path.read_text())
        if "ansible.builtin.systemd_service" in step
    ]
    for step in steps:
        if step.get("enabled") is True:
            assert step["when"] == "not service_oneshot | bool", step
    assert any(step.get("enabled") is False and step["when"] == "service_oneshot | bool" for step in steps)
    handler = next(step for step in steps if step.get("state") == "restarted")
    assert handler["enabled"] == "{{ not (service_oneshot | bool) }}"


def test_producer_marker_follows_its_settings(rendered: Render, varied: Render, inventory: Inventory) -> None:
    host, unit = inventory.host("producer"), "/etc/systemd/system/iot-producer.service"
    assert read_env_file(varied.file(host, "/etc/iot/producer/producer.env"))["IOT_COUNT"] == "7"
    before, after = (producer_marker(r.file(host, unit).read_text()) for r in (rendered, varied))
    assert before != after, "new settings must run the producer again"


def test_no_secret_appears_outside_the_secrets_files(rendered: Render, secret_values: Secrets) -> None:
    modes = {"secrets.env": 0o600, "server.properties": 0o640, "admin.properties": 0o400}
    seen: dict[str, list[str]] = {name: [] for name in secret_values.all()}
    for path in rendered.root.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        where = str(path.relative_to(rendered.root))
        in_service_secrets = path.parent.name == "secrets"
        for name, value in secret_values.all().items():
            if value in text:
                assert in_service_secrets or path.name in modes, (
                    f"the {name} secret is in plain text in {where}"
                )
                seen[name].append(where)
        if in_service_secrets:
            assert stat.S_IMODE(path.stat().st_mode) == 0o400, f"{where} must be mode 0400"
        elif path.name in modes and any(v in text for v in secret_values.all().values()):
            assert stat.S_IMODE(path.stat().st_mode) == modes[path.name], f"{where}: mode"
    # ...and each secret does reach the containers that need it, and only those.
    # The server admin's password stays with CouchDB; the sink gets its own user's.
    assert seen["couchdb"] == ["vm4/etc/iot/couchdb/secrets.env"]
    assert seen["couchdb_sink"] == ["vm4/etc/iot/sink/secrets/iot_couchdb_password"]
    assert seen["grafana"] == ["vm4/etc/iot/grafana/secrets/admin_password"]
    assert sorted(seen["prometheus"]) == [
        "vm4/etc/iot/grafana/secrets/prometheus_password",
        "vm4/etc/iot/prometheus/secrets/password",
    ]
    assert sorted(seen["kafka"]) == [
        "vm1/etc/iot/producer/secrets/iot_kafka_extra_config",
        "vm3/etc/iot/inference/secrets/iot_kafka_extra_config",
        "vm4/etc/iot/sink/secrets/iot_kafka_extra_config",
    ]
    # Kafka's admin stays on the broker; each service gets its own user's password.
    assert sorted(seen["kafka_admin"]) == [
        "vm2/etc/kafka/admin.properties",
        "vm2/etc/kafka/server.properties",
    ]
    assert seen["kafka_producer"] == ["vm1/etc/iot/producer/secrets/iot_kafka_password"]
    assert seen["kafka_inference"] == ["vm3/etc/iot/inference/secrets/iot_kafka_password"]
    assert seen["kafka_sink"] == ["vm4/etc/iot/sink/secrets/iot_kafka_password"]
    assert seen["kafka_audit"] == []


def test_each_kafka_user_gets_the_acls_iot_kafka_access_gives_it(
    rendered: Render, inventory: Inventory
) -> None:
    """The role's ACLs (group_vars/broker.yml) and iot_shared.access's are the same list."""
    applied = yaml.safe_load(
        rendered.file(inventory.host("broker"), "/var/lib/zookeeper/.iot-acls.yml").read_text()
    )
    resources = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "cluster": ResourceType.BROKER}
    role = {
        (acl["user"], Grant(resources[acl["resource"]], acl["name"], AclOperation[snake(op).upper()]))
        for acl in applied
        for op in acl["operations"]
    }
    ours = {
        (user, grant)
        for user, user_grants in grants(AccessSettings.model_construct()).items()
        for grant in user_grants
    }
    assert role == ours


def snake(name: str) -> str:
    """Kafka's operation names as confluent-kafka spells them: IdempotentWrite -> Idempotent_Write."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name)


def test_no_secret_appears_in_ansible_output(rendered: Render, secret_values: Secrets) -> None:
    for name, value in secret_values.all().items():
        assert value not in rendered.log, f"the {name} secret is in the playbook's output"


def test_couchdb_runs_as_a_container_with_a_data_volume_and_admin(
    rendered: Render, inventory: Inventory
) -> None:
    host = inventory.host("couchdb")
    unit = rendered.file(host, "/etc/systemd/system/couchdb.service").read_text()
    assert "--volume couchdb-data:/opt/couchdb/data" in unit
    assert "--env-file /etc/iot/couchdb/secrets.env" in unit
    # One node, one copy of each shard: CouchDB's default n = 3 would leave every write at 202.
    assert "--volume /etc/iot/couchdb/couchdb.ini:/opt/couchdb/etc/default.d/20-iot.ini:ro" in unit
    ini = rendered.file(host, "/etc/iot/couchdb/couchdb.ini").read_text()
    assert "single_node = true" in ini and "n = 1" in ini
    assert set(read_env_file(rendered.file(host, "/etc/iot/couchdb/secrets.env"))) == {
        "COUCHDB_USER",
        "COUCHDB_PASSWORD",
    }


def test_couchdb_serves_tls_with_its_own_copy_of_the_hosts_certificate(
    rendered: Render, varied: Render, inventory: Inventory
) -> None:
    host = inventory.host("couchdb")
    unit = rendered.file(host, "/etc/systemd/system/couchdb.service").read_text()
    assert "--volume /etc/iot/couchdb/tls.pem:/etc/couchdb-tls/host.pem:ro" in unit
    ini = configparser.ConfigParser(comment_prefixes=(";",))
    ini.read_string(rendered.file(host, "/etc/iot/couchdb/couchdb.ini").read_text())
    assert dict(ini["ssl"]) == {
        "enable": "true",
        "port": "6984",
        "cert_file": "/etc/couchdb-tls/host.pem",
        "key_file": "/etc/couchdb-tls/host.pem",
    }
    # iot_couchdb_tls: false keeps the plain port, for the sink too.
    plain = varied.file(host, "/etc/iot/couchdb/couchdb.ini").read_text()
    assert "[ssl]" not in plain
    assert "tls.pem" not in varied.file(host, "/etc/systemd/system/couchdb.service").read_text()
    public = read_env_file(varied.file(host, "/etc/iot/sink/sink.env"))
    assert public["IOT_COUCHDB_URL"] == f"http://{inventory.address('couchdb')}:5984"
    assert "IOT_COUCHDB_CA_FILE" not in public


def firewall_ports(rendered: Render, host: str) -> dict[int, str]:
    """Port -> the accept rules' text for it, from the rendered nftables file."""
    ports: dict[int, str] = {}
    for line in rendered.file(host, "/etc/iot/firewall.nft").read_text().splitlines():
        match = re.search(r"tcp dport (\d+) accept", line)
        if match:
            ports[int(match.group(1))] = ports.get(int(match.group(1)), "") + line.strip() + "\n"
    return ports


def rule_sources(rule: str) -> set[str]:
    """The source addresses of one port's rule; it must be one `ip saddr { ... }` line."""
    assert rule.count("\n") == 1 and "ip6" not in rule, rule
    match = re.search(r"^ip saddr \{ (.*?) \} tcp dport \d+ accept", rule)
    assert match, f"open to everyone: {rule}"
    return set(match.group(1).split(", "))


def test_firewall_opens_only_the_ports_each_vm_needs(rendered: Render, inventory: Inventory) -> None:
    # Every VM: SSH and its node exporter (9101).
    expected = {
        "producer": {22, 9101, 8001},
        "broker": {22, 9101, 9092, 9404},
        "inference": {22, 9101, 8002},
        "sink": {22, 9101, 8003, 6984, 17986, 3000, 9090, 9093},
    }
    for group, ports in expected.items():
        assert set(firewall_ports(rendered, inventory.host(group))) == ports, group
        text = rendered.file(inventory.host(group), "/etc/iot/firewall.nft").read_text()
        assert "policy drop;" in text
        assert "flush ruleset" not in text, "would wipe Docker's rules"
    # Kafka (plaintext) accepts the pipeline VMs only.
    assert rule_sources(firewall_ports(rendered, inventory.host("broker"))[9092]) == set(
        inventory.addresses.values()
    )
    # The broker's metrics (JMX exporter): Prometheus and the admins only.
    assert rule_sources(firewall_ports(rendered, inventory.host("broker"))[9404]) == {
        inventory.address("monitoring"),
        CONTROLLER,
    }


def test_firewall_opens_admin_ports_to_the_controller_not_to_everyone(
    rendered: Render, inventory: Inventory
) -> None:
    """Each port to the VMs that use it and the controller; SSH to the controller only."""
    monitoring, sink = inventory.address("monitoring"), inventory.address("sink")
    expected = {
        ("producer", 8001): {monitoring, CONTROLLER},
        ("inference", 8002): {monitoring, CONTROLLER},
        ("sink", 8003): {monitoring, CONTROLLER},
        ("couchdb", 6984): {sink, CONTROLLER},
        ("couchdb", 17986): {monitoring, CONTROLLER},
        ("monitoring", 3000): {CONTROLLER},
        ("monitoring", 9090): {CONTROLLER},
        ("monitoring", 9093): {CONTROLLER},
        **{(group, 9101): {monitoring, CONTROLLER} for group in ("producer", "broker", "inference", "sink")},
    }
    for (group, port), sources in expected.items():
        assert rule_sources(firewall_ports(rendered, inventory.host(group))[port]) == sources, (group, port)
    for host in inventory.addresses:
        text = rendered.file(host, "/etc/iot/firewall.nft").read_text()
        assert "0.0.0.0/0" not in text and "::/0" not in text and "meta nfproto" not in text, host
        assert rule_sources(firewall_ports(rendered, host)[22]) == {CONTROLLER}, host


def test_admin_only_ports_stay_closed_while_the_controller_is_unknown(
    ansible_home: Path, tmp_path: Path, inventory: Inventory, secret_values: Secrets
) -> None:
    """No SSH connection to read it from (render-only) and none set: an empty source list must
    not turn into "everyone" (the firewall role's meaning of no sources)."""
    result = render_site(
        ansible_home, tmp_path, secret_values.extra_vars, "--limit", "sink", "--tags", "firewall"
    )
    assert result.returncode == 0, output(result)
    ports = firewall_ports(Render(tmp_path, ""), inventory.host("sink"))
    assert set(ports) == {22, 9101, 8003, 6984, 17986}
    assert rule_sources(ports[8003]) == {inventory.address("monitoring")}
    assert rule_sources(ports[9101]) == {inventory.address("monitoring")}
    assert rule_sources(ports[17986]) == {inventory.address("monitoring")}
    assert rule_sources(ports[6984]) == {inventory.address("sink")}
    # SSH stays open to everyone rather than locking the VM out.
    assert ports[22] == 'tcp dport 22 accept comment "SSH"\n'


def test_admin_sources_can_be_widened(varied: Render, inventory: Inventory) -> None:
    wider = {CONTROLLER, "192.0.2.0/24"}
    assert rule_sources(firewall_ports(varied, inventory.host("producer"))[8001]) == wider | {
        inventory.address("monitoring")
    }
    ports = firewall_ports(varied, inventory.host("sink"))
    assert rule_sources(ports[9090]) == wider
    assert rule_sources(ports[5984]) == wider | {inventory.address("sink")}
    assert rule_sources(ports[22]) == wider


def test_prometheus_scrapes_every_service_on_its_vm(rendered: Render, inventory: Inventory) -> None:
    config = yaml.safe_load(
        rendered.file(inventory.host("monitoring"), "/etc/iot/prometheus/prometheus.yml").read_text()
    )
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    for name, (_, port) in SERVICES.items():
        assert jobs[name] == [f"{inventory.address(name)}:{port}"]
    # CouchDB's own endpoint, on the port its ini opens (and the firewall, to this host).
    [couchdb] = [job for job in config["scrape_configs"] if job["job_name"] == "couchdb"]
    assert couchdb["metrics_path"] == "/_node/_local/_prometheus"
    assert jobs["couchdb"] == [f"{inventory.address('couchdb')}:17986"]
    ini = rendered.file(inventory.host("couchdb"), "/etc/iot/couchdb/couchdb.ini").read_text()
    assert "[prometheus]\nadditional_port = true\nbind_address = 0.0.0.0\nport = 17986" in ini
    # Each broker's JMX exporter, a Java agent serving on the broker's address and the job's port,
    # with the same rules the local stack uses.
    broker = inventory.address("broker")
    assert jobs["kafka"] == [f"{broker}:9404"]
    unit = rendered.file(inventory.host("broker"), "/etc/systemd/system/kafka.service").read_text()
    agent = "/var/cache/kafka/jmx_prometheus_javaagent-1.0.1.jar"
    assert (
        f'Environment="KAFKA_JMX_EXPORTER=-javaagent:{agent}={broker}:9404:/etc/kafka/jmx-exporter.yml"'
        in unit
    )
    assert "$KAFKA_JMX_EXPORTER" in exec_starts(unit)[0]
    rules = rendered.file(inventory.host("broker"), "/etc/kafka/jmx-exporter.yml").read_text()
    assert rules == (REPO / "deploy" / "prometheus" / "kafka-jmx-exporter.yml").read_text()
    # Every target is labelled with its VM; every VM's node exporter, on its own address.
    for job in config["scrape_configs"]:
        if job["job_name"] != "prometheus":
            assert all(group["labels"]["host"] in inventory.addresses for group in job["static_configs"]), job
    [node] = [job for job in config["scrape_configs"] if job["job_name"] == "node"]
    assert {g["labels"]["host"]: g["targets"] for g in node["static_configs"]} == {
        host: [f"{address}:9101"] for host, address in inventory.addresses.items()
    }
    for host, address in inventory.addresses.items():
        flags = rendered.file(host, "/etc/default/prometheus-node-exporter").read_text()
        assert f"ARGS='--web.listen-address={address}:9101 " in flags, flags


def test_prometheus_loads_the_same_alert_rules_as_compose(rendered: Render, inventory: Inventory) -> None:
    host = inventory.host("monitoring")
    installed = rendered.file(host, "/etc/iot/prometheus/rules/alerts.yml")
    assert installed.read_bytes() == ALERT_RULES.read_bytes()
    config = yaml.safe_load(rendered.file(host, "/etc/iot/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/alerts.yml"]
    unit = rendered.file(host, "/etc/systemd/system/prometheus.service").read_text()
    assert "--volume /etc/iot/prometheus/rules:/etc/prometheus/rules:ro" in unit


def test_grafana_provisions_the_same_dashboard_as_compose(rendered: Render, inventory: Inventory) -> None:
    host = inventory.host("monitoring")
    assert DASHBOARD.is_file(), f"missing {DASHBOARD}"
    provisioned = rendered.file(host, "/etc/iot/grafana/dashboards/iot-pipeline.json")
    assert provisioned.read_bytes() == DASHBOARD.read_bytes()
    provider = yaml.safe_load(
        rendered.file(host, "/etc/iot/grafana/provisioning/dashboards/iot-pipeline.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    datasource = yaml.safe_load(
        rendered.file(host, "/etc/iot/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["type"] == "prometheus"
    unit = rendered.file(host, "/etc/systemd/system/grafana.service").read_text()
    assert "--volume /etc/iot/grafana/dashboards:/etc/grafana/dashboards:ro" in unit


def unit_words(render: Render, host: str, name: str) -> list[str]:
    return exec_starts(render.file(host, f"/etc/systemd/system/{name}.service").read_text())[0]


def test_prometheus_serves_https_only_and_asks_every_request_for_its_login(
    rendered: Render, inventory: Inventory, secret_values: Secrets
) -> None:
    host, address = inventory.host("monitoring"), inventory.address("monitoring")
    web = yaml.safe_load(rendered.file(host, "/etc/iot/prometheus/secrets/web.yml").read_text())
    assert web["tls_server_config"] == {
        "cert_file": "/etc/prometheus/secrets/tls.pem",
        "key_file": "/etc/prometheus/secrets/tls.pem",
    }
    # Only a bcrypt hash of the password, which Prometheus checks.
    assert set(web["basic_auth_users"]) == {"prometheus"}
    hashed = web["basic_auth_users"]["prometheus"]
    assert hashed.startswith("$2b$12$") and bcrypt.verify(secret_values.prometheus, hashed)
    assert not bcrypt.verify(secret_values.grafana, hashed)
    command = unit_words(rendered, host, "prometheus")
    assert "--web.config.file=/etc/prometheus/secrets/web.yml" in command
    volumes = [command[i + 1] for i, word in enumerate(command) if word == "--volume"]
    assert "/etc/iot/prometheus/secrets:/etc/prometheus/secrets:ro" in volumes
    assert "/etc/iot/tls/ca.pem:/etc/prometheus/ca.pem:ro" in volumes
    # It scrapes itself as any client reaches it: HTTPS at the certificate's address, logged in.
    config = yaml.safe_load(rendered.file(host, "/etc/iot/prometheus/prometheus.yml").read_text())
    itself = next(job for job in config["scrape_configs"] if job["job_name"] == "prometheus")
    assert itself["scheme"] == "https" and itself["tls_config"] == {"ca_file": "/etc/prometheus/ca.pem"}
    assert itself["basic_auth"] == {
        "username": "prometheus",
        "password_file": "/etc/prometheus/secrets/password",
    }
    assert itself["static_configs"] == [{"targets": [f"{address}:9090"]}]


def test_grafana_serves_https_only_and_reads_its_passwords_from_files(
    rendered: Render, inventory: Inventory
) -> None:
    host, address = inventory.host("monitoring"), inventory.address("monitoring")
    env = read_env_file(rendered.file(host, "/etc/iot/grafana/grafana.env"))
    assert env["GF_SERVER_PROTOCOL"] == "https"
    assert env["GF_SERVER_CERT_FILE"] == env["GF_SERVER_CERT_KEY"] == "/run/secrets/tls.pem"
    assert env["GF_SECURITY_COOKIE_SECURE"] == "true"
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/admin_password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    command = unit_words(rendered, host, "grafana")
    assert [command[i + 1] for i, word in enumerate(command) if word == "--env-file"] == [
        "/etc/iot/grafana/grafana.env"
    ]
    volumes = [command[i + 1] for i, word in enumerate(command) if word == "--volume"]
    assert "/etc/iot/grafana/secrets:/run/secrets:ro" in volumes
    assert "/etc/iot/tls/ca.pem:/etc/grafana/ca.pem:ro" in volumes
    # Its data source reaches Prometheus over HTTPS, trusting the CA, with Prometheus's login.
    (source,) = yaml.safe_load(
        rendered.file(host, "/etc/iot/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert source["url"] == f"https://{address}:9090"
    assert source["basicAuth"] is True and source["basicAuthUser"] == "prometheus"
    assert source["jsonData"] == {"tlsAuthWithCACert": True}
    assert source["secureJsonData"] == {
        "tlsCACert": "$__file{/etc/grafana/ca.pem}",
        "basicAuthPassword": "$__file{/run/secrets/prometheus_password}",
    }


@pytest.mark.parametrize("name", ["prometheus", "alertmanager", "grafana"])
def test_monitoring_containers_are_hardened(rendered: Render, inventory: Inventory, name: str) -> None:
    command = unit_words(rendered, inventory.host("monitoring"), name)
    joined = " ".join(command)
    for flags in ("--cap-drop ALL", "--security-opt no-new-privileges", "--read-only", "--tmpfs /tmp:"):
        assert flags in joined, (name, flags)
    memory = command[command.index("--memory") + 1]
    assert re.fullmatch(r"[0-9]+[mg]", memory), memory
    assert int(command[command.index("--pids-limit") + 1]) > 0
    # No setting on the command line at all, so none can be a password.
    assert "--env" not in command and "-e" not in command


def test_grafana_can_be_switched_off(varied: Render, inventory: Inventory) -> None:
    """monitoring_grafana_enabled=false: no Grafana file, unit or port, and no Grafana password
    needed; Prometheus as before."""
    host = inventory.host("monitoring")
    files = varied.files(host)
    assert not [f for f in files if "grafana" in f], sorted(files)
    assert "/etc/systemd/system/prometheus.service" in files
    assert set(firewall_ports(varied, host)) == {22, 9101, 8003, 5984, 17986, 9090, 9093}


def test_images_can_come_from_a_plain_http_registry(varied: Render, inventory: Inventory) -> None:
    host = inventory.host("monitoring")
    prometheus = exec_starts(varied.file(host, "/etc/systemd/system/prometheus.service").read_text())[0]
    assert f"{REGISTRY}/standins/prometheus:v3.1.0" in prometheus
    couchdb = exec_starts(varied.file(host, "/etc/systemd/system/couchdb.service").read_text())[0]
    assert couchdb[-1] == f"{REGISTRY}/standins/couchdb:3.5.0"
    for name in ("producer", "sink"):
        daemon = json.loads(varied.file(inventory.host(name), "/etc/docker/daemon.json").read_text())
        assert daemon["insecure-registries"] == [REGISTRY]
        assert daemon["log-opts"] == {"max-size": "10m", "max-file": "3"}, "the defaults stay"


def test_the_role_locks_img_db_down_as_iot_couchdb_setup_does() -> None:
    """roles/couchdb applies the same `_security`, validate function and roles as the command
    Compose and the local stack run, so the deployments cannot drift apart."""
    role = yaml.safe_load((ANSIBLE / "roles" / "couchdb" / "vars" / "main.yml").read_text())
    assert role["couchdb_security"] == couch_setup.security_object()
    assert role["couchdb_access_ddoc"] == couch_setup.ACCESS_DDOC
    assert role["couchdb_validate_doc_update"] == couch_setup.VALIDATE_DOC_UPDATE
    users = yaml.safe_load((ANSIBLE / "group_vars" / "couchdb.yml").read_text())["couchdb_users"]
    assert [u["role"] for u in users] == [couch_setup.WRITER_ROLE, couch_setup.READER_ROLE]


# --- a CouchDB cluster ---------------------------------------------------------------------

COUCHDB_NODES = {"vm4": "10.0.0.14", "vm5": "10.0.0.15", "vm6": "10.0.0.16"}
COOKIE = "cookie0123456789abcdef"


def cluster_inventory(path: Path, couchdb_hosts: list[str], example: Path = INVENTORY) -> Path:
    """The EXAMPLE inventory with its [couchdb] group made of COUCHDB_HOSTS (vm4 is the sink)."""
    text = example.read_text().replace("[couchdb:children]\nsink\n", "")
    assert "[couchdb" not in text, f"{example} has no [couchdb:children] sink to replace"
    lines = ["[couchdb]"] + [
        h if h == "vm4" else f"{h} ansible_host=203.0.113.{a.rsplit('.', 1)[1]} iot_address={a}"
        for h, a in COUCHDB_NODES.items()
        if h in couchdb_hosts
    ]
    path.write_text(text + "\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def clustered(ansible_home: Path, tmp_path_factory: pytest.TempPathFactory, secret_values: Secrets) -> Render:
    """The ZooKeeper cluster's example inventory (three brokers, vm5-vm7, and two inference
    hosts) with three CouchDB VMs too (vm4, the sink's, and vm5, vm6): one render, which takes
    minutes, for the tests of both clusters, and of the two on the same VMs."""
    out = tmp_path_factory.mktemp("clustered")
    inventory = cluster_inventory(out / "inventory.ini", list(COUCHDB_NODES), CLUSTER_EXAMPLES["zookeeper"])
    extra = {
        **secret_values.extra_vars,
        "iot_controller_address": CONTROLLER,
        "iot_kafka_mode": "zookeeper",
        "vault_couchdb_erlang_cookie": COOKIE,
    }
    result = render_site(ansible_home, out / "render", extra, inventory=inventory)
    assert result.returncode == 0, output(result)
    return Render(out / "render", result.stdout + result.stderr)


def test_a_couchdb_cluster_keeps_three_copies_and_the_sink_knows_every_node(
    clustered: Render, inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = list(COUCHDB_NODES.values())
    public = read_env_file(clustered.file("vm4", "/etc/iot/sink/sink.env"))
    monkeypatch.setenv("IOT_COUCHDB_URL", public["IOT_COUCHDB_URL"])
    # In the inventory's order: the first is the one the sink uses while it answers.
    assert load_settings(SinkSettings, []).couchdb_urls == [f"https://{a}:6984" for a in nodes]
    for host, address in COUCHDB_NODES.items():
        ini = clustered.file(host, "/etc/iot/couchdb/couchdb.ini").read_text()
        assert "single_node = false" in ini and "n = 3" in ini, host
        unit = clustered.file(host, "/etc/systemd/system/couchdb.service").read_text()
        assert f"--env NODENAME={address}" in " ".join(exec_starts(unit)[0]), host
        secret = read_env_file(clustered.file(host, "/etc/iot/couchdb/secrets.env"))
        assert secret["COUCHDB_ERLANG_COOKIE"] == COOKIE, host
        assert len(secret["COUCHDB_SECRET"]) == 64, host  # the session key finish_cluster needs
        assert COOKIE not in unit and COOKIE not in ini
    config = yaml.safe_load(clustered.file("vm4", "/etc/iot/prometheus/prometheus.yml").read_text())
    [couchdb] = [job for job in config["scrape_configs"] if job["job_name"] == "couchdb"]
    targets = [target for group in couchdb["static_configs"] for target in group["targets"]]
    assert sorted(targets) == sorted(f"{a}:17986" for a in nodes)


def test_the_cluster_nodes_reach_each_other_and_no_one_else_reaches_erlang(
    clustered: Render, inventory: Inventory
) -> None:
    nodes = set(COUCHDB_NODES.values())
    sink, monitoring = inventory.address("sink"), inventory.address("monitoring")
    for host in COUCHDB_NODES:
        ports = firewall_ports(clustered, host)
        assert rule_sources(ports[6984]) == {sink, CONTROLLER}, host
        # CouchDB's cluster setup reaches a joining node's plain port.
        assert rule_sources(ports[5984]) == nodes, host
        assert rule_sources(ports[4369]) == rule_sources(ports[9100]) == nodes, host
        assert rule_sources(ports[17986]) == {monitoring, CONTROLLER}, host
    # A single node opens no Erlang port.
    assert not {4369, 9100} & set(firewall_ports(clustered, "vm1"))


@pytest.mark.parametrize(
    ("couchdb_hosts", "cookie", "message"),
    [
        (["vm4", "vm5"], COOKIE, "2 cannot lose one"),
        (list(COUCHDB_NODES), "CHANGE-ME-couchdb-erlang-cookie", "vault.example.yml"),
    ],
    ids=["two-nodes", "placeholder-cookie"],
)
def test_a_cluster_of_two_or_without_a_cookie_is_refused(
    ansible_home: Path,
    tmp_path: Path,
    secret_values: Secrets,
    couchdb_hosts: list[str],
    cookie: str,
    message: str,
) -> None:
    inventory = cluster_inventory(tmp_path / "inventory.ini", couchdb_hosts)
    extra = {**secret_values.extra_vars, "vault_couchdb_erlang_cookie": cookie}
    result = render_site(ansible_home, tmp_path / "render", extra, inventory=inventory)
    assert result.returncode != 0, output(result)
    assert message in result.stdout, output(result)


# --- a Kafka cluster -----------------------------------------------------------------------

BROKERS = {"vm5": "10.0.0.15", "vm6": "10.0.0.16", "vm7": "10.0.0.17"}
CLUSTER_EXAMPLES = {
    mode: ANSIBLE / f"inventory.{mode}-cluster.example.ini" for mode in ("zookeeper", "kraft")
}


@pytest.fixture(scope="module", params=list(CLUSTER_EXAMPLES))
def brokers(
    request: pytest.FixtureRequest,
    ansible_home: Path,
    tmp_path_factory: pytest.TempPathFactory,
    secret_values: Secrets,
) -> tuple[str, Render]:
    """The README's example cluster inventories: three brokers (vm5, vm6, vm7) in either mode, and
    two inference hosts (vm2, vm3); ZooKeeper's with the CouchDB cluster beside (`clustered`)."""
    mode = request.param
    if mode == "zookeeper":
        return mode, request.getfixturevalue("clustered")
    out = tmp_path_factory.mktemp(f"brokers-{mode}")
    extra = {**secret_values.extra_vars, "iot_controller_address": CONTROLLER, "iot_kafka_mode": mode}
    result = render_site(ansible_home, out, extra, inventory=CLUSTER_EXAMPLES[mode])
    assert result.returncode == 0, output(result)
    return mode, Render(out, result.stdout + result.stderr)


def test_three_brokers_keep_three_copies_and_need_two_for_a_write(brokers: tuple[str, Render]) -> None:
    mode, render = brokers
    # Broker id K on the K-th broker of the inventory, whose order the playbook keeps.
    for broker_id, host in enumerate(BROKERS, 1):
        props = read_properties(render.file(host, "/etc/kafka/server.properties"))
        assert props["broker.id" if mode == "zookeeper" else "node.id"] == str(broker_id), host
        assert props["advertised.listeners"] == f"SASL_SSL://{BROKERS[host]}:9092", host
        assert props["default.replication.factor"] == props["offsets.topic.replication.factor"] == "3", host
        assert props["transaction.state.log.replication.factor"] == "3", host
        assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2", host
        assert props["unclean.leader.election.enable"] == "false", host
        if mode == "zookeeper":
            assert props["zookeeper.connect"] == ",".join(f"{a}:2181" for a in BROKERS.values()), host
            # A dead broker's partitions move once its session expires: 6 s, not Kafka's 18.
            assert props["zookeeper.session.timeout.ms"] == "6000", host
            zk = read_properties(render.file(host, "/etc/kafka/zookeeper.properties"))
            servers = {k: v for k, v in zk.items() if k.startswith("server.")}
            assert servers == {f"server.{k}": f"{a}:2888:3888" for k, a in enumerate(BROKERS.values(), 1)}, (
                host
            )
            assert render.file(host, "/var/lib/zookeeper/myid").read_text().strip() == str(broker_id), host
        else:
            voters = ",".join(f"{k}@{a}:9093" for k, a in enumerate(BROKERS.values(), 1))
            assert props["controller.quorum.voters"] == voters, host
            assert not any("zookeeper" in f for f in render.files(host)), host


@pytest.mark.parametrize("name", ["producer", "inference", "sink"])
def test_every_service_bootstraps_from_every_broker(brokers: tuple[str, Render], name: str) -> None:
    _mode, render = brokers
    hosts = {"producer": ["vm1"], "inference": ["vm2", "vm3"], "sink": ["vm4"]}[name]
    instance_ids = set()
    for host in hosts:
        env = read_env_file(render.file(host, f"/etc/iot/{name}/{name}.env"))
        assert env["IOT_KAFKA_BOOTSTRAP_SERVERS"] == ",".join(f"{a}:9092" for a in BROKERS.values())
        instance_ids.add(env.get("IOT_GROUP_INSTANCE_ID"))
    # Each instance of a group is a static member of its own.
    assert len(instance_ids) == len(hosts)


def test_the_brokers_reach_each_others_quorum_and_no_one_else_does(brokers: tuple[str, Render]) -> None:
    mode, render = brokers
    peers = set(BROKERS.values())
    quorum_ports = {2181, 2888, 3888} if mode == "zookeeper" else {9093}
    for host in BROKERS:
        ports = firewall_ports(render, host)
        assert {port for port in ports if port in {2181, 2888, 3888, 9093}} == quorum_ports, host
        for port in quorum_ports:
            assert rule_sources(ports[port]) == peers, (host, port)
    assert not quorum_ports & set(firewall_ports(render, "vm1"))


@pytest.mark.parametrize(
    ("drop", "extra", "message"),
    [
        ("vm7", {}, "2 cannot lose one"),
        ("", {"iot_images_partitions": 1}, "would sit idle"),
        ("", {"iot_kafka_mode": "zk"}, "iot_kafka_mode is zookeeper or kraft"),
    ],
    ids=["two-brokers", "more-members-than-partitions", "unknown-mode"],
)
def test_a_broker_layout_that_cannot_work_is_refused(
    ansible_home: Path, tmp_path: Path, secret_values: Secrets, drop: str, extra: dict[str, Any], message: str
) -> None:
    text = CLUSTER_EXAMPLES["zookeeper"].read_text()
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(re.sub(rf"^{drop} .*\n", "", text, flags=re.M) if drop else text)
    result = render_site(
        ansible_home, tmp_path / "render", {**secret_values.extra_vars, **extra}, inventory=inventory
    )
    assert result.returncode != 0, output(result)
    assert message in result.stdout, output(result)


# --- Alertmanager ------------------------------------------------------------------------

ALERTMANAGER_BASE = REPO / "deploy" / "alertmanager" / "alertmanager.yml"


def alertmanager_config(render: Render, inventory: Inventory) -> dict[str, Any]:
    path = render.file(inventory.host("monitoring"), "/etc/iot/alertmanager/alertmanager.yml")
    check = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def test_alertmanager_routes_as_compose_and_without_receivers_only_keeps_the_alerts(
    rendered: Render, inventory: Inventory
) -> None:
    config = alertmanager_config(rendered, inventory)
    base = yaml.safe_load(ALERTMANAGER_BASE.read_text())
    assert config["route"] == base["route"] and config["inhibit_rules"] == base["inhibit_rules"]
    assert config["receivers"] == [{"name": base["route"]["receiver"]}]
    assert "global" not in config


def test_alertmanager_notifies_the_receivers_set_with_their_secrets_in_files(
    varied: Render, inventory: Inventory
) -> None:
    host = inventory.host("monitoring")
    config = alertmanager_config(varied, inventory)
    [receiver] = config["receivers"]
    assert receiver["webhook_configs"] == [
        {
            "url": "https://hooks.example.com/iot",
            "send_resolved": True,
            "http_config": {"authorization": {"credentials_file": "/etc/alertmanager/secrets/webhook_token"}},
        }
    ]
    assert receiver["email_configs"] == [{"to": "oncall@example.com", "send_resolved": True}]
    assert config["global"]["smtp_auth_password_file"] == "/etc/alertmanager/secrets/smtp_password"
    assert config["global"]["smtp_smarthost"] == "smtp.example.com:587"
    secrets_dir = "/etc/iot/alertmanager/secrets"
    assert varied.file(host, f"{secrets_dir}/webhook_token").read_text() == "webhook-token-4d1f"
    assert varied.file(host, f"{secrets_dir}/smtp_password").read_text() == "smtp-password-8e2a"
    for name in ("/etc/iot/alertmanager/alertmanager.yml", "/etc/systemd/system/alertmanager.service"):
        text = varied.file(host, name).read_text()
        assert "webhook-token-4d1f" not in text and "smtp-password-8e2a" not in text, name
    assert "webhook-token-4d1f" not in varied.log and "smtp-password-8e2a" not in varied.log


def test_prometheus_sends_its_alerts_to_alertmanager_over_https_with_its_login(
    rendered: Render, inventory: Inventory, secret_values: Secrets
) -> None:
    host, address = inventory.host("monitoring"), inventory.address("monitoring")
    prometheus = yaml.safe_load(rendered.file(host, "/etc/iot/prometheus/prometheus.yml").read_text())
    [target] = prometheus["alerting"]["alertmanagers"]
    assert target["scheme"] == "https" and target["tls_config"] == {"ca_file": "/etc/prometheus/ca.pem"}
    assert target["basic_auth"]["username"] == "prometheus"
    assert target["static_configs"] == [{"targets": [f"{address}:9093"]}]
    # Alertmanager serves HTTPS only on that address, asking the same login (the same hash).
    web = yaml.safe_load(rendered.file(host, "/etc/iot/alertmanager/secrets/web.yml").read_text())
    assert web["tls_server_config"]["cert_file"] == "/etc/alertmanager/secrets/tls.pem"
    assert bcrypt.verify(secret_values.prometheus, web["basic_auth_users"]["prometheus"])
    command = unit_words(rendered, host, "alertmanager")
    assert f"--web.listen-address={address}:9093" in command
    assert "--cluster.listen-address=" in command  # no gossip port: one Alertmanager


# --- Watchdog ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "port"), [("inference", 8002), ("sink", 8003)])
def test_a_long_running_service_gets_a_watchdog_on_its_health_endpoint(
    rendered: Render, inventory: Inventory, name: str, port: int
) -> None:
    host, address = inventory.host(name), inventory.address(name)
    units = rendered.root / host / "etc" / "systemd" / "system"
    [command] = exec_starts((units / f"iot-{name}-watchdog.service").read_text())
    assert command[:2] == ["/usr/bin/python3", "/usr/local/lib/iot/iot-watchdog.py"]
    assert command[command.index("--url") + 1] == f"http://{address}:{port}/healthz"
    assert command[command.index("--unit") + 1] == f"iot-{name}.service"
    timer = (units / f"iot-{name}-watchdog.timer").read_text()
    assert "OnUnitActiveSec=20" in timer
    script = rendered.file(host, "/usr/local/lib/iot/iot-watchdog.py")
    assert script.read_text() == (ANSIBLE / "roles" / "service" / "files" / "iot-watchdog.py").read_text()


def test_the_one_shot_producer_gets_no_watchdog(rendered: Render, inventory: Inventory) -> None:
    units = rendered.root / inventory.host("producer") / "etc" / "systemd" / "system"
    assert not list(units.glob("*watchdog*"))
