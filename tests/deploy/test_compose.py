"""The Docker images and the Compose stack, checked without a Docker engine.

What would otherwise only fail at `make up`: lint findings, an invalid compose file, a setting
the service does not read, a command that does not exist, Prometheus scraping the wrong port,
a COPY source that is not there, a variable .env.example does not define.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from iot_inference.settings import InferenceSettings
from iot_producer.settings import ProducerSettings
from iot_shared.settings import env_name
from iot_shared.topics import TopicSettings
from iot_sink.settings import SinkSettings
from tests.paths import REPO

COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
ROLES = ("producer", "inference", "sink")
DOCKERFILES = {role: REPO / "services" / role / "Dockerfile" for role in ROLES}
VENV_BIN = REPO / ".venv" / "bin"
# Which settings class reads the environment of each Compose service built from our images.
SETTINGS = {
    "producer": ProducerSettings,
    "inference": InferenceSettings,
    "sink": SinkSettings,
    "topics": TopicSettings,
}


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(VENV_BIN))
    assert path, f"{name} is not installed: `make test` installs it (see deploy/local/stack.sh install)"
    return path


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose file as Compose itself reads it, with .env.example's values."""
    result = subprocess.run(
        [tool("docker-compose"), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def dockerfile_lines(role: str) -> list[str]:
    # Join continuation lines so each instruction is one line.
    return DOCKERFILES[role].read_text().replace("\\\n", " ").splitlines()


@pytest.mark.parametrize("role", ROLES)
def test_dockerfile_passes_hadolint_without_findings(role: str) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILES[role])], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.parametrize("role", ROLES)
def test_image_is_multi_stage_pinned_and_non_root(role: str) -> None:
    lines = dockerfile_lines(role)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", "\n".join(lines), re.MULTILINE)
    assert sum(line.startswith("FROM ") for line in lines) >= 2
    assert [line for line in lines if line.startswith("USER ")] == ["USER 10001"]
    assert "STOPSIGNAL SIGTERM" in lines
    assert any(line.startswith("HEALTHCHECK ") and "iot_shared.healthcheck" in line for line in lines)
    # The shared library is installed as a package into the virtualenv, not copied loose.
    assert any("pip install --no-deps ./shared" in line for line in lines)


def test_inference_image_uses_cpu_torch_and_verified_weights() -> None:
    text = "\n".join(dockerfile_lines("inference"))
    assert "https://download.pytorch.org/whl/cpu" in text
    assert "grep -Ev '^(torch|triton|nvidia-|cuda-)'" in text  # no CUDA wheels from the lock file
    from iot_inference.model import WEIGHTS_SHA256, WEIGHTS_URL

    assert WEIGHTS_URL in text and f"WEIGHTS_SHA256={WEIGHTS_SHA256}" in text
    assert "sha256sum --check" in text
    assert "IOT_WEIGHTS=/opt/models/cifar10_resnet20-4118986f.pt" in text


def test_torch_pin_in_the_image_matches_the_lock_file() -> None:
    lock = (REPO / "uv.lock").read_text()
    locked = re.search(r'name = "torch"\nversion = "([^"]+)"', lock)
    assert locked, "torch not in uv.lock"
    assert f"ARG TORCH_VERSION={locked.group(1)}" in dockerfile_lines("inference")


@pytest.mark.parametrize("role", ROLES)
def test_dockerfile_copy_sources_exist_in_the_build_context(role: str) -> None:
    ignored_everything = (REPO / ".dockerignore").read_text().splitlines()[1:2] == ["**"]
    allowed = [line[1:] for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for line in dockerfile_lines(role):
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        for source in line.split()[1:-1]:
            assert (REPO / source).exists(), f"{DOCKERFILES[role]}: COPY source {source} does not exist"
            if ignored_everything:
                assert any(Path(source).match(a.rstrip("/")) or source.startswith(a) for a in allowed), (
                    f"{source} is excluded by .dockerignore"
                )


def test_compose_is_valid_and_requires_its_secrets(tmp_path: Path) -> None:
    empty = tmp_path / ".env"
    empty.write_text("")
    result = subprocess.run(
        [tool("docker-compose"), "--env-file", str(empty), "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "COUCHDB_PASSWORD" in result.stderr


def test_every_variable_the_compose_file_uses_is_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE_FILE.read_text()))
    defined = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert used - defined == set()


def test_no_secret_is_written_into_the_compose_file() -> None:
    for line in COMPOSE_FILE.read_text().splitlines():
        if "PASSWORD" in line and ":" in line:
            assert "${" in line.split(":", 1)[1], f"literal secret: {line.strip()}"


def test_every_environment_variable_is_a_setting_the_service_reads(resolved: dict[str, Any]) -> None:
    for name, settings in SETTINGS.items():
        env = resolved["services"][name].get("environment", {})
        known = {env_name(field) for field in settings.model_fields}
        unknown = {k for k in env if k.startswith("IOT_")} - known
        assert not unknown, f"{name} sets variables its settings do not read: {unknown}"
        # The values parse too: each service would start with them.
        values = {k.removeprefix("IOT_").lower(): v for k, v in env.items() if k.startswith("IOT_")}
        settings(**{k: v for k, v in values.items() if k != "kafka_extra_config"})


def test_every_service_command_exists_and_answers_help(resolved: dict[str, Any]) -> None:
    for name in SETTINGS:
        service = resolved["services"][name]
        role = Path(service["build"]["dockerfile"]).parent.name
        entrypoint = service.get("entrypoint") or re.findall(
            r'"([^"]+)"', next(line for line in dockerfile_lines(role) if line.startswith("ENTRYPOINT"))
        )
        command = entrypoint[0] if isinstance(entrypoint, list) else entrypoint
        result = subprocess.run(
            [str(VENV_BIN / command), "--help"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{name}: {command} --help failed: {result.stderr}"


def test_build_contexts_and_dockerfiles_exist(resolved: dict[str, Any]) -> None:
    built = {name: s["build"] for name, s in resolved["services"].items() if "build" in s}
    assert set(built) == {"topics", *ROLES}
    for build in built.values():
        context = Path(build["context"])
        assert context.resolve() == REPO
        assert (context / build["dockerfile"]).is_file()


def test_prometheus_scrapes_the_ports_the_services_serve_metrics_on(resolved: dict[str, Any]) -> None:
    scrape = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
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
    assert set(ports) == set(ROLES)
    for role in ROLES:
        served = int(resolved["services"][role]["environment"]["IOT_METRICS_PORT"])
        assert ports[role] == served
        assert f"EXPOSE {served}" in dockerfile_lines(role)


def test_inference_can_scale(resolved: dict[str, Any]) -> None:
    inference = resolved["services"]["inference"]
    assert "container_name" not in inference and "ports" not in inference
    assert int(resolved["services"]["topics"]["environment"]["IOT_IMAGES_PARTITIONS"]) >= 3


def test_producer_waits_for_ready_inference_and_sink(resolved: dict[str, Any]) -> None:
    depends = resolved["services"]["producer"]["depends_on"]
    assert depends["inference"]["condition"] == "service_healthy"
    assert depends["sink"]["condition"] == "service_healthy"


def test_grafana_provisions_the_repository_dashboard() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    dashboards = next(m for m in mounts if m.endswith(":/var/lib/grafana/dashboards:ro"))
    host_dir = (COMPOSE_DIR / dashboards.split(":")[0]).resolve()
    assert (host_dir / "iot-pipeline.json").is_file()
    provider = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/dashboards/iot-pipeline.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_make_up_without_env_file_says_how_to_create_it(tmp_path: Path) -> None:
    result = subprocess.run(
        ["make", "-s", "up", f"COMPOSE_ENV={tmp_path / '.env'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "cp deploy/compose/.env.example" in result.stderr
