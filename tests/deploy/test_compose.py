"""The Compose stack (`deploy/compose/`, `make up`), checked without a Docker engine.

What would otherwise only fail at `make up`: an invalid compose file, a missing secret that
starts the stack anyway, a setting the service does not read, a command that does not exist,
Prometheus scraping the wrong port, a dependency on a health check nobody runs, a scaled
service that cannot scale, a variable .env.example does not define, versions that drift from the
Ansible deployment, an Alertmanager configuration it refuses or whose inhibitions name alerts
that do not exist.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from iot_inference.settings import InferenceSettings
from iot_producer.settings import ProducerSettings
from iot_shared.access import AccessSettings
from iot_shared.settings import SECRETS_DIR, ServiceSettings, env_name
from iot_shared.topics import TopicSettings
from iot_sink.couch_setup import CouchSetupSettings
from iot_sink.settings import SinkSettings
from testbed.paths import REPO
from tests.deploy.conftest import ROLES, VENV_BIN, Dockerfile, find_tool

COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
SECURE_FILE = COMPOSE_DIR / "compose.secure.yaml"  # what `make up SECURE=1` adds
# Optional files `make up` adds for local copies of the downloads: variable -> (file, service).
LOCAL_DATA = {
    "WEIGHTS_DIR": (COMPOSE_DIR / "compose.weights-dir.yaml", "inference"),
    "CIFAR_DIR": (COMPOSE_DIR / "compose.cifar-dir.yaml", "producer"),
}
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
PROMETHEUS_CONFIG = COMPOSE_DIR / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_RULE_TESTS = REPO / "tests" / "deploy" / "prometheus" / "alerts_test.yml"
ANSIBLE_DEFAULTS = REPO / "deploy" / "ansible" / "roles"
# Which settings class reads the environment of each Compose service built from our images.
SETTINGS: dict[str, type[ServiceSettings]] = {
    "producer": ProducerSettings,
    "inference": InferenceSettings,
    "sink": SinkSettings,
    "topics": TopicSettings,
    "couchdb-setup": CouchSetupSettings,
}
# The one-shot containers that run in the sink's image and exit.
ONE_SHOTS = ("topics", "couchdb-setup")
# The passwords `make up` requires in .env and writes to SECRETS_DIR/<name in lower case>.
REQUIRED_SECRETS = (
    "COUCHDB_PASSWORD",
    "COUCHDB_SINK_PASSWORD",
    "COUCHDB_READER_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)
# Of those, what Compose itself reads from .env: CouchDB's image takes its admin from the environment.
COMPOSE_REQUIRED_SECRETS = ("COUCHDB_PASSWORD",)
THIRD_PARTY = {  # service -> the variable that names its image
    "zookeeper": "ZOOKEEPER_IMAGE",
    "kafka": "KAFKA_IMAGE",
    "couchdb": "COUCHDB_IMAGE",
    "prometheus": "PROMETHEUS_IMAGE",
    "alertmanager": "ALERTMANAGER_IMAGE",
    "grafana": "GRAFANA_IMAGE",
}


def compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_tool("docker-compose"), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose file as Compose itself reads it (validated), with .env.example's values."""
    result = compose_config(ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def role_of(service: dict[str, Any]) -> str:
    return Path(service["build"]["dockerfile"]).parent.name


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> volume name or host path; docker-compose v1 prints `src:dst:mode`, v2 a mapping."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found[target] = source
    return found


def published(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host address, container port) per published port; v1 prints `ip:host:container/tcp`, v2 a mapping."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            parts = port.split("/")[0].split(":")
            found.append((parts[0] if len(parts) == 3 else "", int(parts[-1])))
        else:
            found.append((port.get("host_ip", ""), int(port["target"])))
    return found


def seconds(duration: str | int) -> float:
    """`60s` as written (v1) or `1m0s` (v2)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts, f"not a duration: {duration}"
    return sum(float(n) * units[u] for n, u in parts)


def mounted_secrets(service: dict[str, Any]) -> dict[str, str]:
    """Path in the container -> secret name; a target without a path lands in /run/secrets."""
    found = {}
    for secret in service.get("secrets", []):
        source = secret if isinstance(secret, str) else secret["source"]
        target = source if isinstance(secret, str) else secret.get("target", source)
        found[target if target.startswith("/") else f"/run/secrets/{target}"] = source
    return found


def healthcheck_disabled(healthcheck: dict[str, Any]) -> bool:
    # `disable: true` as written; docker-compose v1 renders it as `test: [NONE]`.
    return bool(healthcheck.get("disable")) or healthcheck.get("test") in (["NONE"], "NONE")


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# --- the file and its variables ------------------------------------------------------------


@pytest.mark.parametrize("secret", COMPOSE_REQUIRED_SECRETS)
def test_compose_refuses_to_start_without_a_secret(tmp_path: Path, secret: str) -> None:
    env = tmp_path / ".env"
    env.write_text("".join(f"{k}={v}\n" for k, v in env_example().items() if k != secret))
    result = compose_config(env)
    assert result.returncode != 0
    assert secret in result.stderr and "deploy/compose/.env" in result.stderr, result.stderr


def compose_text() -> str:
    """compose.yaml and compose.secure.yaml: where the stack reads its variables."""
    return COMPOSE_FILE.read_text() + SECURE_FILE.read_text()


def compose_defaults() -> dict[str, str]:
    """`${NAME:-default}` of the compose files: name -> default (the same everywhere it is used)."""
    found: dict[str, str] = {}
    for name, default in re.findall(r"\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}", compose_text()):
        assert found.setdefault(name, default) == default, f"{name} has two defaults"
    return found


def test_every_variable_the_compose_files_use_is_in_env_example() -> None:
    # SECRETS_DIR comes from the Makefile (beside the settings file), not from .env.
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", compose_text())) - {"SECRETS_DIR"}
    # Compose's own settings (COMPOSE_PROFILES) are read by Compose, not written into the file.
    defined = {name for name in env_example() if not name.startswith("COMPOSE_")}
    assert used - defined == set(), "missing from .env.example"
    # The passwords make writes to secret files are not in the compose file.
    assert defined - used == set(REQUIRED_SECRETS) - set(COMPOSE_REQUIRED_SECRETS), (
        ".env.example sets variables the stack does not use"
    )


def test_env_example_holds_the_compose_files_defaults() -> None:
    """A user who copies .env.example gets what an empty .env gives: today's pins."""
    example = env_example()
    for name, default in compose_defaults().items():
        if name == "SECRETS_DIR":  # the Makefile's, beside the settings file: deploy/compose/.secrets
            assert (COMPOSE_DIR / default).resolve() == COMPOSE_DIR / ".secrets"
            continue
        assert example[name] == default, f"{name}: .env.example {example[name]!r}, compose.yaml {default!r}"


def test_secrets_are_placeholders_and_the_real_env_file_is_never_committed() -> None:
    example = env_example()
    for secret in REQUIRED_SECRETS:
        assert example[secret].startswith("change-me"), f"{secret} in .env.example is not a placeholder"
    for secret in COMPOSE_REQUIRED_SECRETS:
        assert re.search(rf"\$\{{{secret}:\?[^}}]+\}}", COMPOSE_FILE.read_text()), f"{secret} is not required"
    # Read from .gitignore itself: CI may run on a tree without .git.
    ignores = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert ignores & {"/deploy/compose/.env", "deploy/compose/.env", ".env"}, (
        "deploy/compose/.env is not git-ignored"
    )


def test_no_secret_is_written_into_the_compose_files() -> None:
    files = [COMPOSE_FILE, *COMPOSE_DIR.glob("**/*.yml"), *COMPOSE_DIR.glob("**/*.ini")]
    for path in files:
        for line in path.read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and re.search(r"PASSWORD|SECRET|TOKEN", key, re.IGNORECASE) and value.strip():
                # From .env, or a secret's path (GF_..._PASSWORD__FILE: /run/secrets/...).
                assert value.strip().startswith(("${", "/run/secrets/")), (
                    f"{path}: literal secret: {line.strip()}"
                )


# --- our services: settings, commands, images ------------------------------------------------


def test_every_environment_variable_is_a_setting_the_service_reads(resolved: dict[str, Any]) -> None:
    for name, settings in SETTINGS.items():
        env = resolved["services"][name].get("environment", {})
        known = {env_name(field) for field in settings.model_fields}
        unknown = {k for k in env if k.startswith("IOT_")} - known
        assert not unknown, f"{name} sets variables its settings do not read: {unknown}"
        assert all(k.startswith("IOT_") for k in env), f"{name}: a variable without the IOT_ prefix"
        # The values parse too: each service would start with them (and its secret files).
        values = {k.removeprefix("IOT_").lower(): v for k, v in env.items()}
        for path in mounted_secrets(resolved["services"][name]):
            values[Path(path).name.removeprefix("iot_")] = "a-password"
        settings.model_validate(values)


def test_passwords_reach_our_containers_as_files_not_environment(resolved: dict[str, Any]) -> None:
    """`docker inspect` shows a container's environment: no password of ours is in it."""
    services = resolved["services"]
    declared = resolved["secrets"]
    for name, service in services.items():
        env = service.get("environment", {})
        if name != "couchdb":  # its official image reads its admin from the environment only
            leaked = [k for k in env if "PASSWORD" in k and not k.endswith("__FILE")]
            assert not leaked, f"{name}: passwords in the environment: {leaked}"
        for path, source in mounted_secrets(service).items():
            assert Path(declared[source]["file"]).name == source, "each secret is the file make writes"
            assert source.upper() in REQUIRED_SECRETS, source
            if name in SETTINGS:
                # Read by the setting the file is named after, in IOT_SECRETS_DIR's default.
                setting = Path(path).name.removeprefix("iot_")
                assert Path(path).parent == Path(SECRETS_DIR), path
                assert "SecretStr" in str(SETTINGS[name].model_fields[setting].annotation), path
    assert set(mounted_secrets(services["sink"]).values()) == {"couchdb_sink_password"}
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] in mounted_secrets(
        services["grafana"]
    )


def test_every_service_command_exists_and_answers_help(
    resolved: dict[str, Any], dockerfiles: dict[str, Dockerfile]
) -> None:
    for name in SETTINGS:
        service = resolved["services"][name]
        entrypoint = (
            service.get("entrypoint") or dockerfiles[role_of(service)].final.one("ENTRYPOINT").exec_form()
        )
        command = entrypoint[0] if isinstance(entrypoint, list) else entrypoint.split()[0]
        result = subprocess.run(
            [str(VENV_BIN / command), "--help"], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"{name}: {command} --help failed: {result.stderr}"


def dockerfile_args(dockerfile: Dockerfile) -> dict[str, str | None]:
    """Every ARG the Dockerfile declares (before FROM or in a stage): name -> default or None."""
    found: dict[str, str | None] = {}
    declared = [f"{k}={v}" if v else k for k, v in dockerfile.global_args.items()]
    declared += [i.args for stage in dockerfile.stages for i in stage.all("ARG")]
    for arg in declared:
        name, sep, default = arg.partition("=")
        value = default.strip('"') if sep else None
        if found.get(name) is None:
            found[name] = value
    return found


def test_build_args_are_arguments_the_dockerfiles_take_with_the_same_defaults(
    resolved: dict[str, Any], dockerfiles: dict[str, Dockerfile]
) -> None:
    defaults = compose_defaults()
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name, service in resolved["services"].items():
        if "build" not in service:
            continue
        args = service["build"].get("args", {})
        declared = dockerfile_args(dockerfiles[role_of(service)])
        assert {"PYTHON_IMAGE", "BUILD_CA_CERTS"} <= set(args), f"{name}: base image and CA not passed"
        for arg in args:
            assert arg in declared, (
                f"{name}: build arg {arg} is not an ARG of {role_of(service)}'s Dockerfile"
            )
            # Passed through from .env, defaulting to what the Dockerfile would use on its own.
            written = (
                raw[name]["build"]["args"].get(arg) if isinstance(raw[name]["build"]["args"], dict) else None
            )
            if written is not None:
                assert written == f"${{{arg}:-{defaults[arg]}}}", f"{name}: {arg} is not passed from .env"
            assert defaults[arg] == (declared[arg] or ""), (
                f"{name}: {arg} defaults differ from the Dockerfile"
            )
    assert {"TORCH_INDEX_URL", "WEIGHTS_URL"} <= set(resolved["services"]["inference"]["build"]["args"])
    assert {"CIFAR_URL", "CIFAR_MD5"} <= set(resolved["services"]["producer"]["build"]["args"])


def test_local_data_files_replace_the_download_stages(dockerfiles: dict[str, Dockerfile]) -> None:
    """compose.*-dir.yaml (Compose v2 only, so checked here without Compose): each names a stage
    of the service's Dockerfile that only fetches the file, and the file's name."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for variable, (path, service) in LOCAL_DATA.items():
        override = yaml.safe_load(path.read_text())
        assert set(override["services"]) == {service}, path.name
        contexts = override["services"][service]["build"]["additional_contexts"]
        role = Path(services[service]["build"]["dockerfile"]).parent.name
        for stage_name, source in contexts.items():
            assert source.startswith(f"${{{variable}:?"), f"{path.name}: {stage_name} is not ${variable}"
            stage = dockerfiles[role].stage(stage_name)
            fetches = [i.keyword for i in stage.instructions if i.keyword != "ARG"]
            assert stage.base == "scratch" and fetches == ["ADD"], stage
            fetched = Path(stage.one("ADD").operands[-1]).name or Path(stage.one("ADD").operands[0]).name
            consumer = "\n".join(i.args for s in dockerfiles[role].stages for i in s.all("COPY"))
            assert f"--from={stage_name}" in consumer, f"nothing copies from {stage_name}"
            assert fetched in source, f"{path.name} does not name {fetched}"


def test_built_images_come_from_the_repository_dockerfiles(resolved: dict[str, Any]) -> None:
    built = {name: s for name, s in resolved["services"].items() if "build" in s}
    assert set(built) == {*ONE_SHOTS, *ROLES}
    for name, service in built.items():
        context = Path(service["build"]["context"])
        assert context.resolve() == REPO, f"{name}: the build context must be the repo root"
        assert (context / service["build"]["dockerfile"]).is_file()
        assert service["image"].split(":")[0] == f"iot-{role_of(service)}"
    # iot-topics (the shared library, installed in every image) and iot-couchdb-setup run in the sink's.
    for one_shot in ONE_SHOTS:
        assert built[one_shot]["image"] == built["sink"]["image"]
        assert built[one_shot]["build"] == built["sink"]["build"]


@pytest.mark.parametrize(
    ("one_shot", "waits_for", "consumers"),
    [("topics", "kafka", ("inference", "sink")), ("couchdb-setup", "couchdb", ("sink",))],
)
def test_one_shot_init_runs_before_its_consumers(
    resolved: dict[str, Any], one_shot: str, waits_for: str, consumers: tuple[str, ...]
) -> None:
    services = resolved["services"]
    init = services[one_shot]
    assert init["restart"] == "no"
    assert healthcheck_disabled(init["healthcheck"]), f"{one_shot} serves no health port"
    assert init["depends_on"][waits_for]["condition"] == "service_healthy"
    for consumer in consumers:
        assert services[consumer]["depends_on"][one_shot]["condition"] == "service_completed_successfully"


def test_inference_scales_over_the_images_partitions(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    inference = services["inference"]
    # `--scale inference=3`: no fixed name or host port, one consumer group for all replicas.
    assert "container_name" not in inference and "ports" not in inference
    assert "IOT_GROUP_ID" not in inference["environment"]
    assert InferenceSettings.model_fields["group_id"].default == "inference"
    partitions = int(services["topics"]["environment"]["IOT_IMAGES_PARTITIONS"])
    assert partitions == 3 == TopicSettings.model_fields["images_partitions"].default
    # And Prometheus finds every replica (DNS returns one address per container).
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    assert jobs["inference"]["dns_sd_configs"][0]["type"] == "A"


# --- start order, health, restarts, volumes, network ----------------------------------------


def has_healthcheck(service: dict[str, Any], dockerfiles: dict[str, Dockerfile]) -> bool:
    if "healthcheck" in service:
        return not healthcheck_disabled(service["healthcheck"])
    return "build" in service and bool(dockerfiles[role_of(service)].final.all("HEALTHCHECK"))


def test_every_health_condition_has_a_health_check(
    resolved: dict[str, Any], dockerfiles: dict[str, Dockerfile]
) -> None:
    services = resolved["services"]
    for name, service in services.items():
        for target, dependency in service.get("depends_on", {}).items():
            if dependency["condition"] == "service_healthy":
                assert has_healthcheck(services[target], dockerfiles), f"{name} waits on {target}'s health"


def test_producer_starts_only_when_broker_inference_and_sink_are_ready(resolved: dict[str, Any]) -> None:
    depends = resolved["services"]["producer"]["depends_on"]
    for dependency in ("kafka", "inference", "sink"):
        assert depends[dependency]["condition"] == "service_healthy", dependency


def test_services_restart_share_one_network_and_keep_data_on_named_volumes(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(resolved["networks"]) == {"pipeline"}
    declared = set(resolved["volumes"])
    data_dirs = {
        "zookeeper": "/var/lib/zookeeper/data",
        "kafka": "/var/lib/kafka/data",
        "couchdb": "/opt/couchdb/data",
        "prometheus": "/prometheus",
        "alertmanager": "/alertmanager",  # its silences and notification log
        "grafana": "/var/lib/grafana",
        "producer": "/var/lib/iot-producer",
    }
    for name, service in services.items():
        assert set(service["networks"]) == {"pipeline"}, name
        if name not in ONE_SHOTS:
            assert service["restart"] in {"unless-stopped", "always", "on-failure"}, name
    for name, target in data_dirs.items():
        assert mounts(services[name]).get(target) in declared, f"{name}: {target} is not on a named volume"


def test_sigterm_has_time_to_flush_before_docker_kills(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert seconds(services["inference"]["stop_grace_period"]) > (
        InferenceSettings.model_fields["delivery_timeout_seconds"].default
    )
    assert seconds(services["sink"]["stop_grace_period"]) > 30  # the sink's final flush
    assert seconds(services["producer"]["stop_grace_period"]) > (
        ProducerSettings.model_fields["flush_timeout_seconds"].default
    )


# --- Kafka, CouchDB and the services agree on addresses ------------------------------------


def test_kafka_runs_in_zookeeper_mode_and_advertises_what_the_services_dial(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    kafka_env = services["kafka"]["environment"]
    assert re.fullmatch(r"confluentinc/cp-kafka:7\.\d+\.\d+", services["kafka"]["image"])
    assert re.fullmatch(r"confluentinc/cp-zookeeper:7\.\d+\.\d+", services["zookeeper"]["image"])
    zookeeper_port = services["zookeeper"]["environment"]["ZOOKEEPER_CLIENT_PORT"]
    assert kafka_env["KAFKA_ZOOKEEPER_CONNECT"] == f"zookeeper:{zookeeper_port}"
    internal = re.search(r"INTERNAL://([^,]+)", kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    assert internal
    for name in SETTINGS.keys() - {"couchdb-setup"}:
        assert services[name]["environment"]["IOT_KAFKA_BOOTSTRAP_SERVERS"] == internal.group(1), name
    # The broker does not invent topics: iot-topics creates them with their partitions.
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_the_setup_runs_as_couchdbs_admin_and_the_sink_as_the_user_it_makes(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    couchdb, setup = services["couchdb"]["environment"], services["couchdb-setup"]["environment"]
    sink = services["sink"]["environment"]
    assert sink["IOT_COUCHDB_URL"] == setup["IOT_COUCHDB_URL"] == "http://couchdb:5984"
    assert sink["IOT_COUCHDB_DB"] == setup["IOT_COUCHDB_DB"]
    assert setup["IOT_COUCHDB_USER"] == couchdb["COUCHDB_USER"]
    setup_files = mounted_secrets(services["couchdb-setup"])
    assert setup_files["/run/secrets/iot_couchdb_password"] == "couchdb_password"  # CouchDB's admin's
    # The sink is not the server admin: it logs in as the member the setup makes.
    assert sink["IOT_COUCHDB_USER"] == CouchSetupSettings.model_fields["couchdb_sink_user"].default
    assert (
        mounted_secrets(services["sink"])["/run/secrets/iot_couchdb_password"]
        == setup_files["/run/secrets/iot_couchdb_sink_password"]
        == "couchdb_sink_password"
    )
    assert re.fullmatch(r"couchdb:3\.\d+\.\d+", services["couchdb"]["image"])


def test_third_party_images_are_pinned_and_match_the_ansible_deployment(resolved: dict[str, Any]) -> None:
    images = {name: s["image"] for name, s in resolved["services"].items() if "build" not in s}
    assert set(images) == set(THIRD_PARTY)
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    defaults = compose_defaults()
    for name, variable in THIRD_PARTY.items():
        # Replaceable from .env (a mirror, or the tests' stand-ins), today's pin by default.
        assert raw[name]["image"] == f"${{{variable}:-{defaults[variable]}}}", name
        assert images[name] == defaults[variable], name
    for name, image in images.items():
        assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name}: {image} is not an exact version"
    ansible = {}
    for role in ("couchdb", "monitoring"):
        ansible.update(yaml.safe_load((ANSIBLE_DEFAULTS / role / "defaults" / "main.yml").read_text()))
    assert images["couchdb"] == ansible["couchdb_image"]
    assert images["prometheus"] == ansible["monitoring_prometheus_image"]
    assert images["alertmanager"] == ansible["monitoring_alertmanager_image"]
    assert images["grafana"] == ansible["monitoring_grafana_image"]


# --- monitoring ----------------------------------------------------------------------------


def test_prometheus_scrapes_the_ports_the_services_serve_metrics_on(
    resolved: dict[str, Any], dockerfiles: dict[str, Dockerfile]
) -> None:
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    ports: dict[str, int] = {}
    for job in scrape["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.split(":")
                assert host == job["job_name"]
                ports[host] = int(port)
        for dns in job.get("dns_sd_configs", []):
            assert dns["names"] == [job["job_name"]]
            ports[job["job_name"]] = int(dns["port"])
    assert set(ports) == {*ROLES, "couchdb"}, "Prometheus must scrape every service and CouchDB"
    for role in ROLES:
        served = int(resolved["services"][role]["environment"]["IOT_METRICS_PORT"])
        assert ports[role] == served == SETTINGS[role].model_fields["metrics_port"].default, role
        assert dockerfiles[role].final.env()["IOT_METRICS_PORT"] == str(served)
    # CouchDB serves its own metrics on the port its mounted ini opens, inside the network only.
    ini = configparser.ConfigParser()
    ini.read(COMPOSE_DIR / "couchdb" / "single-node.ini")
    assert ini["prometheus"]["additional_port"] == "true"
    assert ports["couchdb"] == int(ini["prometheus"]["port"])
    assert [target for _, target in published(resolved["services"]["couchdb"])] == [5984], (
        "CouchDB's metrics port is for Prometheus on the Compose network only"
    )


def test_published_ports_listen_on_loopback_only(resolved: dict[str, Any]) -> None:
    # Docker's published ports bypass the host firewall: on all interfaces they would expose
    # Kafka, CouchDB, Prometheus and Grafana to the whole network.
    ports = {name: published(service) for name, service in resolved["services"].items()}
    published_services = {name for name, found in ports.items() if found}
    assert published_services >= {"kafka", "couchdb", "prometheus", "alertmanager", "grafana"}
    for name, found in ports.items():
        for host_ip, _ in found:
            assert host_ip == "127.0.0.1", f"{name} publishes on {host_ip or 'every interface'}"


def test_prometheus_loads_the_repository_alert_rules(resolved: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    mounted = mounts(resolved["services"]["prometheus"])
    [rule_file] = config["rule_files"]
    assert Path(mounted[rule_file]) == REPO / "deploy" / "prometheus" / "alerts.yml"


# --- Alertmanager ---------------------------------------------------------------------------


def read_only_mounts(service: dict[str, Any]) -> set[str]:
    """Container paths mounted read-only; v1 prints `src:dst:ro`, v2 a mapping with read_only."""
    found = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            if "ro" in parts[2:]:
                found.add(parts[1])
        elif volume.get("read_only"):
            found.add(volume["target"])
    return found


def flags(service: dict[str, Any]) -> dict[str, str]:
    """`--name=value` of the service's command: name -> value."""
    return dict(arg.removeprefix("--").partition("=")[::2] for arg in service.get("command", []))


def amtool_check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_tool("amtool"), "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_alertmanager_runs_hardened_with_its_config_read_only_and_on_loopback(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    alertmanager = services["alertmanager"]
    # As the pipeline's own containers run: no capability, read-only root, bounded processes.
    for key in ("cap_drop", "security_opt", "read_only", "tmpfs", "pids_limit"):
        assert alertmanager[key] == services["sink"][key], key
    assert Path(mounts(alertmanager)["/etc/alertmanager/alertmanager.yml"]) == ALERTMANAGER_CONFIG
    assert "/etc/alertmanager/alertmanager.yml" in read_only_mounts(alertmanager)
    command = flags(alertmanager)
    assert command["config.file"] == "/etc/alertmanager/alertmanager.yml"
    assert command["storage.path"] == "/alertmanager"  # on a named volume (the test above)
    # One instance: no gossip port, which would otherwise listen on every interface.
    assert command["cluster.listen-address"] == ""
    assert published(alertmanager) == [("127.0.0.1", 9093)]
    assert "web.listen-address" not in command, "Prometheus and the published port expect :9093"


def test_prometheus_sends_its_alerts_to_the_alertmanager(resolved: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [alertmanagers] = config["alerting"]["alertmanagers"]
    targets = [target for static in alertmanagers["static_configs"] for target in static["targets"]]
    assert targets == ["alertmanager:9093"]
    # Started first, but not waited for: Prometheus queues its alerts until Alertmanager answers.
    depends = resolved["services"]["prometheus"]["depends_on"]
    assert depends["alertmanager"]["condition"] == "service_started"


def test_amtool_accepts_the_alertmanager_config_and_its_example_notifiers(tmp_path: Path) -> None:
    result = amtool_check_config(ALERTMANAGER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    # The commented notifiers below the `default` receiver are what the README tells users to
    # uncomment: they must load too (in Debian's amtool 0.25 as in the image's 0.28).
    head, receiver, examples = ALERTMANAGER_CONFIG.read_text().partition("  - name: default\n")
    assert receiver and "webhook_configs:" in examples and "email_configs:" in examples
    uncommented = tmp_path / "alertmanager.yml"
    uncommented.write_text(head + receiver + re.sub(r"^(\s*)# ", r"\1", examples, flags=re.MULTILINE))
    assert yaml.safe_load(uncommented.read_text())["receivers"][0]["email_configs"]
    result = amtool_check_config(uncommented)
    assert result.returncode == 0, result.stdout + result.stderr


MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"(.*)"')


def parsed(matchers: list[str]) -> list[tuple[str, str, str]]:
    """`name="value"` matchers as (label, operator, value)."""
    found = []
    for matcher in matchers:
        match = MATCHER.fullmatch(matcher.strip())
        assert match, f"not a matcher: {matcher}"
        found.append((match[1], match[2], match[3]))
    return found


def firing_labels() -> dict[str, list[dict[str, str]]]:
    """Alert name -> the labels of each alert promtool's rule tests expect it to fire with."""
    found: dict[str, list[dict[str, str]]] = {}
    for case in yaml.safe_load(ALERT_RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            for alert in check.get("exp_alerts") or []:
                found.setdefault(check["alertname"], []).append(alert.get("exp_labels", {}))
    return found


def test_inhibit_rules_name_alerts_that_exist_with_the_labels_they_compare() -> None:
    """An inhibition that names a renamed alert, or a label the alert does not carry, mutes
    nothing, or everything: checked against the rules and their promtool tests."""
    rules = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    alerts = {rule["alert"] for group in rules for rule in group["rules"] if "alert" in rule}
    firing = firing_labels()
    inhibit_rules = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["inhibit_rules"]
    assert inhibit_rules
    for rule in inhibit_rules:
        source, target = parsed(rule["source_matchers"]), parsed(rule.get("target_matchers", []))
        [name] = [value for label, op, value in source if label == "alertname" and op == "="]
        assert name in alerts, f"inhibit rule's source {name} is not an alert of {ALERT_RULES.name}"
        for label, op, value in target:
            if label == "alertname":
                named = set(value.split("|")) if op in ("=~", "!~") else {value}
                assert named <= alerts, f"{name}'s inhibit rule names {named - alerts}, not alerts"
        # Alertmanager counts a label missing on both sides as equal: a source without it would
        # mute every alert without it. So the source carries it, or the rule requires it.
        for label in rule.get("equal", []):
            required = (label, "=~", ".+") in source
            carried = bool(firing.get(name)) and all(label in labels for labels in firing[name])
            assert required or carried, (
                f'{name} may fire without `{label}`: add {label}=~".+" to its matchers'
            )
        # A target named by its alert fires, in promtool's tests, with the labels the rule expects.
        named_targets = [
            alert
            for label, op, value in target
            if label == "alertname" and op in ("=", "=~")
            for alert in value.split("|")
        ]
        wanted = {label: value for label, op, value in target if label != "alertname" and op == "="}
        for target_name in named_targets:
            assert any(wanted.items() <= labels.items() for labels in firing.get(target_name, [])), (
                f"{target_name} never fires with {wanted} in {ALERT_RULE_TESTS.name}"
            )


def test_grafana_is_an_optional_profile_that_env_example_turns_on(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert services["grafana"]["profiles"] == ["grafana"]
    assert env_example()["COMPOSE_PROFILES"].split(",") == ["grafana"]
    # The stack runs without it: nothing else is in a profile or waits for Grafana.
    for name, service in services.items():
        if name != "grafana":
            assert "profiles" not in service, name
            assert "grafana" not in service.get("depends_on", {}), name


def test_grafana_provisions_the_datasource_and_the_repository_dashboard(resolved: dict[str, Any]) -> None:
    grafana = resolved["services"]["grafana"]
    mounted = {target: Path(source) for target, source in mounts(grafana).items()}
    provisioning = mounted["/etc/grafana/provisioning"]
    assert provisioning == COMPOSE_DIR / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    prometheus = datasources["datasources"][0]
    assert (prometheus["type"], prometheus["url"]) == ("prometheus", "http://prometheus:9090")
    provider = yaml.safe_load((provisioning / "dashboards" / "iot-pipeline.yml").read_text())
    dashboards_in_container = provider["providers"][0]["options"]["path"]
    dashboards = mounted[dashboards_in_container]
    assert dashboards == REPO / "deploy" / "grafana" / "dashboards"
    dashboard = json.loads((dashboards / "iot-pipeline.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]


# --- make ----------------------------------------------------------------------------------


def make(
    *args: str, path: str | None = None, shell: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """make as a user runs it, in a shell with none of the variables it reads, or with `shell`'s."""
    ignored = (*REQUIRED_SECRETS, *LOCAL_DATA, "COMPOSE_CMD", "SECRETS_DIR")
    env = {k: v for k, v in os.environ.items() if k not in ignored} | (shell or {})
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [find_tool("make"), "--no-print-directory", "-s", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_env(path: Path, **overrides: str) -> Path:
    values = {**env_example(), **overrides}
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def test_make_up_without_env_file_says_how_to_create_it(tmp_path: Path) -> None:
    result = make("up", f"COMPOSE_ENV={tmp_path / '.env'}")
    assert result.returncode != 0
    assert "cp deploy/compose/.env.example" in result.stderr


@pytest.mark.parametrize("secret", REQUIRED_SECRETS)
@pytest.mark.parametrize(("value", "says"), [("", "is empty"), (None, "placeholder"), ('""', "is empty")])
def test_make_up_refuses_placeholder_or_empty_passwords(
    tmp_path: Path, secret: str, value: str | None, says: str
) -> None:
    others = {s: "a-real-password" for s in REQUIRED_SECRETS if s != secret}
    env = write_env(tmp_path / ".env", **others, **({secret: value} if value is not None else {}))
    # COMPOSE_CMD=false: should the check let it through, nothing is started.
    result = make("up", f"COMPOSE_ENV={env}", "COMPOSE_CMD=false")
    assert result.returncode != 0
    assert secret in result.stderr and says in result.stderr, result.stderr
    assert "false -p iot-pipeline" not in result.stdout + result.stderr, "make went on to Compose"


def test_make_up_passes_real_passwords_to_compose(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", **dict.fromkeys(REQUIRED_SECRETS, "a-real-password"))
    result = make("-n", "up", f"COMPOSE_ENV={env}", "COMPOSE_CMD=compose-under-test")
    assert result.returncode == 0, result.stderr
    assert (
        f"compose-under-test -p iot-pipeline --env-file {env} -f deploy/compose/compose.yaml" in result.stdout
    )
    assert "up -d --build" in result.stdout
    # Compose finds the secret files where make writes them: beside the settings file.
    assert f"SECRETS_DIR={tmp_path / '.secrets'} " in result.stdout


@pytest.mark.parametrize("secure", [False, True])
def test_make_up_runs_to_its_end_with_compose_answering(tmp_path: Path, secure: bool) -> None:
    """The whole recipe for real, with a Compose that only answers: its last lines (what to open
    next) run in a shell too, and once broke a plain `make up` after it had started everything."""
    env = write_env(tmp_path / ".env", **dict.fromkeys(REQUIRED_SECRETS, "a-real-password"))
    result = make("up", f"COMPOSE_ENV={env}", "COMPOSE_CMD=true", *(["SECURE=1"] if secure else []))
    assert result.returncode == 0, result.stderr
    assert ("SASL_SSL" in result.stdout) is secure, result.stdout


def test_make_up_writes_each_password_to_the_secret_file_compose_mounts(
    tmp_path: Path, resolved: dict[str, Any]
) -> None:
    passwords = {secret: f"{secret.lower()} 'with' \"quotes\" $x" for secret in REQUIRED_SECRETS}
    env = write_env(tmp_path / ".env", **{k: f"'{v}'" for k, v in passwords.items()})
    # A value exported in the shell wins over the file, as in Compose; taken as it is.
    passwords["GRAFANA_ADMIN_PASSWORD"] = 'from the shell"'
    shell = {"GRAFANA_ADMIN_PASSWORD": passwords["GRAFANA_ADMIN_PASSWORD"]}
    result = make("compose-secrets", f"COMPOSE_ENV={env}", shell=shell)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / ".secrets"
    assert folder.stat().st_mode & 0o777 == 0o700
    written = {path.name: path for path in folder.iterdir()}
    assert set(written) == {Path(secret["file"]).name for secret in resolved["secrets"].values()}
    for secret, password in passwords.items():
        path = written[secret.lower()]
        assert path.read_text() == password, secret
        assert path.stat().st_mode & 0o777 == 0o644, "the containers' users read it through a bind mount"


def fake_tools(directory: Path, **scripts: str) -> str:
    """A PATH of nothing but these commands (name -> shell script body)."""
    directory.mkdir()
    for name, body in scripts.items():
        tool = directory / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(0o755)
    return str(directory)


@pytest.mark.parametrize(
    ("tools", "expected"),
    [
        ({"docker": "exit 0", "docker-compose": "exit 0"}, "docker compose -p"),  # the v2 plugin answers
        ({"docker": "exit 1", "docker-compose": "exit 0"}, "docker-compose -p"),  # a docker without it
        ({"podman-compose": "exit 0"}, "podman-compose -p"),
    ],
)
def test_make_uses_the_compose_that_is_installed(
    tmp_path: Path, tools: dict[str, str], expected: str
) -> None:
    env = write_env(tmp_path / ".env")
    result = make("-n", "ps", f"COMPOSE_ENV={env}", path=fake_tools(tmp_path / "bin", **tools))
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_make_says_when_no_compose_is_installed(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env")
    result = make("ps", f"COMPOSE_ENV={env}", path=fake_tools(tmp_path / "bin"))
    assert result.returncode != 0
    assert "no Compose found" in result.stderr


def test_make_up_builds_from_local_folders_with_compose_v2_only(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", **dict.fromkeys(REQUIRED_SECRETS, "a-real-password"))
    folders = {variable: tmp_path / variable.lower() for variable in LOCAL_DATA}
    for folder in folders.values():
        folder.mkdir()
    args = [f"{variable}={folder}" for variable, folder in folders.items()]
    result = make("-n", "up", f"COMPOSE_ENV={env}", "COMPOSE_CMD=docker compose", *args)
    assert result.returncode == 0, result.stderr
    for variable, (path, _) in LOCAL_DATA.items():
        assert f"-f {path.relative_to(REPO)}" in result.stdout
        assert f"{variable}={folders[variable]}" in result.stdout
    # docker-compose v1 cannot read additional_contexts: refused, with what to do instead.
    result = make("up", f"COMPOSE_ENV={env}", "COMPOSE_CMD=false", *args)
    assert result.returncode != 0
    assert "Compose v2" in result.stderr and "WEIGHTS_URL" in result.stderr


# --- make up SECURE=1: compose.secure.yaml ---------------------------------------------------

SECURE_FILES = COMPOSE_DIR / "secure-files.sh"
# Who logs in to Kafka as whom with SECURE=1; admin is the broker's super user.
KAFKA_LOGINS = {
    "kafka-access": "admin",
    "topics": "admin",
    "producer": "iot-producer",
    "inference": "iot-inference",
    "sink": "iot-sink",
}


@pytest.fixture(scope="module")
def secure_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("secure") / ".secrets"
    subprocess.run([str(SECURE_FILES), str(folder)], check=True, timeout=120)
    return folder


@pytest.fixture(scope="module")
def secure(secure_files: Path) -> dict[str, Any]:
    """compose.yaml with compose.secure.yaml, as `make up SECURE=1` runs them."""
    result = subprocess.run(
        [find_tool("docker-compose"), "--env-file", str(ENV_EXAMPLE)]
        + [arg for path in (COMPOSE_FILE, SECURE_FILE) for arg in ("-f", str(path))]
        + ["config"],
        env={**os.environ, "SECRETS_DIR": str(secure_files)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_secure_kafka_takes_sasl_ssl_logins_only_and_refuses_what_no_acl_allows(
    secure: dict[str, Any],
) -> None:
    kafka = secure["services"]["kafka"]
    env = kafka["environment"]
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = [item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")]
    assert {protocols[name] for name in listeners} == {"SASL_SSL"}, protocols
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"]
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"] == "User:admin"
    # The broker's files are mounted where its settings name them, and no password is in its environment.
    mounted = mounted_secrets(kafka)
    for setting in ("KAFKA_SSL_KEYSTORE_LOCATION", "KAFKA_SSL_TRUSTSTORE_LOCATION"):
        assert env[setting] in mounted, setting
    jaas = env["KAFKA_OPTS"].split("java.security.auth.login.config=")[1].split()[0]
    assert jaas in mounted
    assert not [k for k in env if "PASSWORD" in k]
    assert kafka["depends_on"]["kafka-admin-login"]["condition"] == "service_completed_successfully"
    # Still loopback only.
    assert {host for host, _ in published(kafka)} == {"127.0.0.1"}


def test_secure_services_log_in_as_their_own_user_with_a_password_file(secure: dict[str, Any]) -> None:
    services = secure["services"]
    access = AccessSettings.model_fields
    users = {"iot-producer", "iot-inference", "iot-sink", "iot-audit"}
    assert users == {
        f"iot-{field.split('_')[1]}" for field in access if re.fullmatch(r"kafka_\w+_password", field)
    }
    for name, user in KAFKA_LOGINS.items():
        env = services[name]["environment"]
        assert env["IOT_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["IOT_KAFKA_USERNAME"] == user, name
        files = mounted_secrets(services[name])
        assert files[env["IOT_KAFKA_CA_FILE"]] == "ca", name
        own = "admin" if user == "admin" else user.removeprefix("iot-")
        assert files["/run/secrets/iot_kafka_password"] == f"kafka_{own}_password", name
        assert not [k for k in env if "PASSWORD" in k], name
    # iot-kafka-access gets every user's password, each under the setting that reads it.
    files = mounted_secrets(services["kafka-access"])
    for user in users:
        role = user.removeprefix("iot-")
        assert files[f"/run/secrets/iot_kafka_{role}_password"] == f"kafka_{role}_password"
    # The users and ACLs are made before anything but admin logs in.
    assert services["topics"]["depends_on"]["kafka-access"]["condition"] == "service_completed_successfully"
    assert services["kafka-access"]["build"] == services["sink"]["build"]
    assert services["kafka-access"]["image"] == services["sink"]["image"]


def test_secure_couchdb_serves_tls_that_the_sink_and_the_setup_verify(secure: dict[str, Any]) -> None:
    services = secure["services"]
    couchdb = services["couchdb"]
    # CouchDB reads its [ssl] settings from a mounted ini; the key and certificate they name are
    # a mounted secret.
    [ini] = [v for v in couchdb["volumes"] if str(v).split(":")[0].endswith("couchdb/tls.ini")]
    assert ini.split(":")[1].startswith("/opt/couchdb/etc/local.d/"), ini
    tls = configparser.ConfigParser()
    tls.read(COMPOSE_DIR / "couchdb" / "tls.ini")
    assert tls["ssl"]["enable"] == "true" and tls["ssl"]["port"] == "6984"
    mounted = mounted_secrets(couchdb)
    assert mounted[tls["ssl"]["cert_file"]] == mounted[tls["ssl"]["key_file"]] == "couchdb_tls"
    assert ("127.0.0.1", 6984) in published(couchdb)
    assert {host for host, _ in published(couchdb)} == {"127.0.0.1"}
    # Whoever logs in to CouchDB does so over TLS, trusting only the stack's CA.
    for name in ("couchdb-setup", "sink"):
        env = services[name]["environment"]
        assert env["IOT_COUCHDB_URL"] == "https://couchdb:6984", name
        assert mounted_secrets(services[name])[env["IOT_COUCHDB_CA_FILE"]] == "ca", name


def test_secure_files_are_made_once_with_a_certificate_for_what_clients_dial(
    secure: dict[str, Any], secure_files: Path
) -> None:
    made_by_the_script = set(yaml.safe_load(SECURE_FILE.read_text())["secrets"])
    for name in made_by_the_script:
        path = Path(secure["secrets"][name]["file"])
        assert path.parent == secure_files and path.is_file(), name
        assert path.stat().st_mode & 0o777 == 0o644, name
    assert secure_files.stat().st_mode & 0o777 == 0o700
    assert (secure_files / "ca.key").stat().st_mode & 0o777 == 0o600
    assert "ca.key" not in {Path(s["file"]).name for s in secure["secrets"].values()}
    # kafka:9092 and localhost:29092; couchdb:6984 and localhost:6984.
    for server in ("kafka", "couchdb"):
        pem = str(secure_files / f"{server}.pem")
        certificate = subprocess.run(
            ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", pem],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"DNS:{server}" in certificate and "DNS:localhost" in certificate, server
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", str(secure_files / "ca.pem"), pem],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
    admin = (secure_files / "kafka_admin_password").read_text()
    assert f'password="{admin}"' in (secure_files / "kafka_server_jaas.conf").read_text()
    assert f'password="{admin}"' in (secure_files / "kafka_admin.properties").read_text()
    # Run again: nothing is made anew.
    before = {path.name: path.read_bytes() for path in secure_files.iterdir()}
    subprocess.run([str(SECURE_FILES), str(secure_files)], check=True, timeout=120)
    assert before == {path.name: path.read_bytes() for path in secure_files.iterdir()}


def test_make_up_secure_adds_the_override_and_makes_its_files(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", **dict.fromkeys(REQUIRED_SECRETS, "a-real-password"))
    result = make("-n", "up", "SECURE=1", f"COMPOSE_ENV={env}", "COMPOSE_CMD=compose-under-test")
    assert result.returncode == 0, result.stderr
    assert f'secure-files.sh "{tmp_path}/.secrets"' in result.stdout
    assert "-f deploy/compose/compose.yaml -f deploy/compose/compose.secure.yaml" in result.stdout
    result = make("-n", "down", "SECURE=1", f"COMPOSE_ENV={env}", "COMPOSE_CMD=compose-under-test")
    assert "-f deploy/compose/compose.secure.yaml" in result.stdout
    plain = make("-n", "up", f"COMPOSE_ENV={env}", "COMPOSE_CMD=compose-under-test")
    assert "compose.secure.yaml" not in plain.stdout and "secure-files.sh" not in plain.stdout
