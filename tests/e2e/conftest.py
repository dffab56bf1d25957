"""The deployment under test: four hosts, a registry, Kafka's release, two ansible-playbook runs.

Everything here is session-scoped and torn down at the end of the session, also when a test or
a fixture fails (hosts, network, registry, dockerd).
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from testbed.paths import REPO
from tests.e2e import standins
from tests.e2e.ansible import PlaybookRun, run_playbook, write_inventory
from tests.e2e.build_inputs import build_args
from tests.e2e.cache import cache_dir
from tests.e2e.engines import Dockerd, private_dockerd
from tests.e2e.hosts import GATEWAY, Host, hosts
from tests.e2e.kafka_release import build_kafka_release
from tests.e2e.python_base import import_base_image
from tests.e2e.servers import AlertReceiver, alert_receiver, file_server, registry

# The jars deploy/local/stack.sh install resolves: Kafka 3.9 (ZooKeeper mode) and Kafka 4 (KRaft).
KAFKA_RELEASES = {
    "3.9.2": REPO / "deploy" / "local" / ".kafka" / "libs",
    "4.4.0": REPO / "deploy" / "local" / ".kafka4" / "libs",
}
JMX_EXPORTER = REPO / "deploy" / "local" / ".kafka" / "agent" / "jmx_prometheus_javaagent-1.0.1.jar"
KAFKA_CLASSPATH = "/opt/kafka/libs/*"
# How the role's own tools log in to a SASL_SSL broker (the admin, root only on the broker VMs).
KAFKA_ADMIN_CONFIG = "/etc/kafka/admin.properties"
KAFKA_USERS = ("admin", "producer", "inference", "sink", "audit")
IMAGES_SENT = 6
ROLES = ("producer", "inference", "sink")
REGISTRY_PORT = 5000
REGISTRY = f"{GATEWAY}:{REGISTRY_PORT}"
IMAGE_TAG = "e2e"
BUILD_TIMEOUT_S = 3600  # the first inference build downloads PyPI's torch with its CUDA libraries


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The per-test timeout counts the test alone here, not its fixtures: on a new machine the
    session's fixtures download torch, build the images and run the playbook for well over the
    default 900 s, and each command they run has a timeout of its own (BUILD_TIMEOUT_S, the
    playbook's 2400 s)."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.timeout(900, func_only=True))


@dataclass
class Deployment:
    hosts: dict[str, Host]
    first_run: PlaybookRun
    second_run: PlaybookRun
    secrets: list[str]
    couchdb_password: str
    sink_password: str
    reader_password: str
    extra_vars: dict[str, Any]  # what the playbook was run with
    kafka_passwords: dict[str, str]  # admin, producer, inference, sink, audit
    prometheus_password: str
    alerts: AlertReceiver  # what Alertmanager's webhook has sent
    images: int = IMAGES_SENT

    @property
    def couchdb_url(self) -> str:
        """CouchDB's own TLS port: the plain one is closed to other hosts."""
        return f"https://{self.hosts['vm4'].address}:6984"

    @property
    def ca_file(self) -> Path:
        """The deployment's CA, which signed CouchDB's and the brokers' certificates."""
        return Path(self.extra_vars["iot_pki_dir"]) / "ca.pem"

    @property
    def couchdb_auth(self) -> tuple[str, str]:
        """The reader the playbook made: enough to look at the data."""
        return ("iot_reader", self.reader_password)

    @property
    def prometheus_url(self) -> str:
        """HTTPS only, with a certificate from the deployment's CA (ca_file)."""
        return f"https://{self.hosts['vm4'].address}:9090"

    @property
    def prometheus_auth(self) -> tuple[str, str]:
        """The login Prometheus asks of every request."""
        return ("prometheus", self.prometheus_password)

    def kafka_tool(self, main_class: str, *args: str) -> str:
        """A Kafka command-line tool, run on the broker VM against its own listener."""
        vm2 = self.hosts["vm2"]
        quoted = " ".join(f"'{a}'" for a in args)
        return vm2.sh(
            f"java -Dlog4j.configuration=file:/etc/kafka/tools-log4j.properties -cp '{KAFKA_CLASSPATH}'"
            f" {main_class} --bootstrap-server {vm2.address}:9092 --command-config {KAFKA_ADMIN_CONFIG} {quoted}",
            timeout=120,
        )

    def topics(self) -> set[str]:
        return set(self.kafka_tool("org.apache.kafka.tools.TopicCommand", "--list").split())

    def images_topic_size(self) -> int:
        """Records ever written to iot-topic (sum of the partitions' end offsets)."""
        lines = self.kafka_tool("org.apache.kafka.tools.GetOffsetShell", "--topic", "iot-topic").split()
        return sum(int(line.rsplit(":", 1)[1]) for line in lines)

    def ready(self, host: str, port: int) -> bool:
        try:
            url = f"http://{self.hosts[host].address}:{port}/readyz"
            return requests.get(url, timeout=5).status_code == 200
        except requests.RequestException:
            return False


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="session")
def testbed(workdir: Path) -> Iterator[dict[str, Host]]:
    (workdir / "ssh").mkdir()
    with hosts(workdir / "ssh") as found:
        yield found


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """The private Docker daemon that builds the images (and runs `make up`).

    Its data root is kept between sessions for the build cache. Each session's images and their
    `deps` stages (torch) are tagged (`project_images`); the untagged rest, such as older builds,
    is removed at the end, so the disk holds one generation of images, not one per run.
    """
    with private_dockerd([REGISTRY]) as engine:
        yield engine
        engine.docker("image", "prune", "--force", check=False)


@pytest.fixture(scope="session")
def image_build_args(dockerd: Dockerd, workdir: Path) -> Iterator[dict[str, str]]:
    """Build arguments of the project images here (build_inputs.py says why each)."""
    base = import_base_image(dockerd.command, dockerd.env)
    with build_args(base, workdir) as args:
        yield args


@pytest.fixture(scope="session")
def project_images(dockerd: Dockerd, image_build_args: dict[str, str]) -> list[str]:
    """iot-producer, iot-inference, iot-sink :latest, built from the unchanged Dockerfiles.

    Each one's `deps` stage is tagged too (iot-<role>-deps:cache), so that the cleanup at the
    end of the session keeps the cache of its virtualenv (gigabytes of torch) for the next.
    """
    args = [f"--build-arg={key}={value}" for key, value in image_build_args.items()]
    built = []
    for role in ROLES:
        for target, tag in (("deps", f"iot-{role}-deps:cache"), (None, f"iot-{role}:latest")):
            dockerd.docker(
                "build", "--tag", tag, *(["--target", target] if target else []),
                "--file", f"services/{role}/Dockerfile", *args, str(REPO),
                timeout=BUILD_TIMEOUT_S,
            )  # fmt: skip
        built.append(f"iot-{role}:latest")
    return built


@pytest.fixture(scope="session")
def pushed_images(dockerd: Dockerd, image_registry: str, project_images: list[str]) -> dict[str, Any]:
    """The project's images and the CouchDB, Prometheus and Alertmanager stand-ins, pushed to the test
    registry; the role variables that make the hosts pull them from there."""

    def push(local: str, remote: str) -> str:
        dockerd.docker("tag", local, remote)
        dockerd.docker("push", remote, timeout=BUILD_TIMEOUT_S)
        return remote

    for image in project_images:
        push(image, f"{image_registry}/iot/{image.split(':')[0]}:{IMAGE_TAG}")
    couchdb = standins.ensure_image(standins.COUCHDB, dockerd.command, dockerd.env)
    prometheus = standins.ensure_image(standins.PROMETHEUS, dockerd.command, dockerd.env)
    alertmanager = standins.ensure_image(standins.ALERTMANAGER, dockerd.command, dockerd.env)
    return {
        "iot_image_source": "pull",
        "iot_image_registry": f"{image_registry}/iot",
        "iot_image_tag": IMAGE_TAG,
        "docker_insecure_registries": [image_registry],
        "couchdb_image": push(couchdb, f"{image_registry}/standins/couchdb:3.5.0"),
        "monitoring_prometheus_image": push(prometheus, f"{image_registry}/standins/prometheus:v3.1.0"),
        "monitoring_alertmanager_image": push(
            alertmanager, f"{image_registry}/standins/alertmanager:v0.28.1"
        ),
    }


@pytest.fixture(scope="session")
def image_registry(testbed: dict[str, Host]) -> Iterator[str]:
    """host:port of a registry on the test network's gateway (the hosts need the bridge up)."""
    with registry(cache_dir("registry"), GATEWAY, REGISTRY_PORT) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def kafka_download(testbed: dict[str, Host], workdir: Path) -> Iterator[dict[str, str]]:
    """Kafka's releases, assembled from Maven Central's jars, served to the broker VMs over HTTP
    as archive.apache.org lays them out: <version>/<archive>.tgz with its .sha512 beside it,
    which the role reads (kafka_archive_sha512 unset)."""
    served = workdir / "downloads"
    for version, libs in KAFKA_RELEASES.items():
        tarball, sha512 = build_kafka_release(libs, served / version, version=version)
        tarball.with_name(tarball.name + ".sha512").write_text(f"{sha512}  {tarball.name}\n")
    # The JMX exporter agent stack.sh install resolved from Maven Central (the same jar).
    shutil.copy2(JMX_EXPORTER, served / JMX_EXPORTER.name)
    with file_server(served, GATEWAY) as base_url:
        yield {
            "kafka_download_base_url": base_url,
            "kafka_jmx_exporter_url": f"{base_url}/{JMX_EXPORTER.name}",
        }


@pytest.fixture(scope="session")
def alert_webhook(testbed: dict[str, Host]) -> Iterator[tuple[str, AlertReceiver]]:
    """Where Alertmanager sends its notifications: a webhook on the test network's gateway."""
    with alert_receiver(GATEWAY) as webhook:
        yield webhook


@pytest.fixture(scope="session")
def deployment(
    testbed: dict[str, Host],
    workdir: Path,
    kafka_download: dict[str, str],
    pushed_images: dict[str, Any],
    alert_webhook: tuple[str, AlertReceiver],
) -> Deployment:
    """site.yml, unchanged, run twice against vm1-vm4."""
    couchdb_password = secrets.token_urlsafe(18)
    sink_password = secrets.token_urlsafe(18)
    reader_password = secrets.token_urlsafe(18)
    grafana_password = secrets.token_urlsafe(18)
    prometheus_password = secrets.token_urlsafe(18)
    kafka_passwords = {user: secrets.token_urlsafe(18) for user in KAFKA_USERS}
    write_inventory(workdir / "inventory.ini", testbed, workdir / "ssh" / "id_ed25519")
    extra_vars: dict[str, Any] = {
        "vault_couchdb_admin_password": couchdb_password,
        "vault_couchdb_sink_password": sink_password,
        "vault_couchdb_reader_password": reader_password,
        "vault_grafana_admin_password": grafana_password,
        "vault_prometheus_password": prometheus_password,
        **{f"vault_kafka_{user}_password": password for user, password in kafka_passwords.items()},
        # The deployment's CA and certificates, the test's own (not the checkout's .pki).
        "iot_pki_dir": str(workdir / "pki"),
        **kafka_download,
        **pushed_images,
        "docker_install_source": "distro",
        "monitoring_grafana_enabled": False,
        "iot_producer_interval_seconds": 1,
        "monitoring_alert_webhook_url": alert_webhook[0],
    }
    first = run_playbook(workdir / "inventory.ini", extra_vars, workdir)
    second = run_playbook(workdir / "inventory.ini", extra_vars, workdir) if first.returncode == 0 else first
    passwords = [
        couchdb_password,
        sink_password,
        reader_password,
        grafana_password,
        prometheus_password,
        *kafka_passwords.values(),
    ]
    return Deployment(
        testbed,
        first,
        second,
        passwords,
        couchdb_password,
        sink_password,
        reader_password,
        extra_vars,
        kafka_passwords,
        prometheus_password,
        alert_webhook[1],
    )
