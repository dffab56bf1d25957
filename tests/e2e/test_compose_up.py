"""`make up` for real: the Compose stack built and started under a private dockerd.

What `tests/deploy/test_compose.py` cannot prove without an engine: the three images build from
the repository, every container with a health check becomes healthy, the passwords are secret
files that `docker inspect` does not show, images flow from the
producer through Kafka and inference into CouchDB, Prometheus sends its alerts to an Alertmanager
that answers on 127.0.0.1, `--scale inference=2` splits the images
topic's partitions between two members, and `make down` then `make up` keeps the data. Then,
with the images already built, `make up SECURE=1` on fresh volumes: the images are stored end to
end with every service logged in to Kafka over SASL_SSL as its own user and the sink writing to
CouchDB over TLS, and the broker refuses a client without a login (PLAINTEXT, TLS alone, a wrong
password).

The stack's files run unchanged; only `.env` differs from a user's (written by the test, passed as
`make up COMPOSE_ENV=...`, so deploy/compose/.env is never touched):

- third-party images are the stand-ins of `standins.py` (no registry can be reached here), and
  the Python base is `python_base.py`'s; Grafana's profile is off (it has no stand-in);
- torch comes from PyPI (`TORCH_INDEX_URL`; download.pytorch.org cannot be reached), and the
  build trusts this machine's extra CA certificates (`BUILD_CA_CERTS`, for the TLS proxy);
- the weights and the CIFAR-10 archive are served on 127.0.0.1 from the test data in
  `../shared` (`WEIGHTS_URL`, `CIFAR_URL`, `CIFAR_MD5`): the classic builder's dockerd fetches
  them itself, on the host.

The daemon and these build arguments are the session's (`conftest.py`: `dockerd`,
`image_build_args` from `build_inputs.py`), shared with the Ansible test, so one build cache
serves both.

Needs root, Debian's docker.io (dockerd, docker-compose) and mmdebstrap; `make test-deploy` runs
it. The first run downloads PyPI's CUDA build of torch (about 3 GB): about 8 minutes here;
the private dockerd keeps its images and build cache, so later runs rebuild only what changed.
The tests share one stack and run in file order; it is removed (`make down V=1`) at the end of
the module, also after a failure, and dockerd is stopped at the end of the session.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from testbed.paths import REPO
from testbed.ports import free_port
from testbed.waiting import wait_for
from tests.e2e import standins
from tests.e2e.engines import Dockerd

pytestmark = pytest.mark.timeout(7200)

PROJECT = "iot-pipeline"  # the Makefile's `-p`
COMPOSE_DIR = REPO / "deploy" / "compose"
IMAGES_SENT = 6  # PRODUCER_COUNT
# Seconds between two images: the producer lives ~20 s, past its first health probe (at 10 s).
PRODUCER_INTERVAL_S = 4
PARTITIONS = 3  # IMAGES_PARTITIONS
UP_TIMEOUT_S = 5400.0  # the first build downloads torch with its CUDA libraries
SETTLE_TIMEOUT_S = 300.0
FLOW_TIMEOUT_S = 180.0
# The services that finish: the one-shots (compose.secure.yaml's two too) and the producer.
FINISHING = ("topics", "couchdb-setup", "kafka-admin-login", "kafka-access", "producer")
SERVICES = {"zookeeper", "kafka", "topics", "couchdb", "couchdb-setup", "inference", "sink", "producer"}


# --- the inputs: downloads served on loopback, and the .env ---------------------------------


def env_example() -> dict[str, str]:
    values = {}
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def write_env(path: Path, values: dict[str, str]) -> None:
    lines = []
    for key, value in values.items():
        # Multi-line values (the PEM text) in double quotes; both Compose versions read them.
        lines.append(f'{key}="{value}"' if "\n" in value else f"{key}={value}")
    path.write_text("\n".join(lines) + "\n")


# --- the stack --------------------------------------------------------------------------------


def compose_cli() -> list[str]:
    """The Compose the Makefile picks, in the same order."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        return [docker, "compose"]
    for name in ("docker-compose", "podman-compose"):
        found = shutil.which(name)
        if found:
            return [found]
    raise AssertionError("no Compose installed (docker compose, docker-compose or podman-compose)")


@dataclass
class Stack:
    engine: Dockerd
    env_file: Path
    settings: dict[str, str]
    workdir: Path
    timings: dict[str, float] = field(default_factory=dict)
    secure: bool = False  # `make up SECURE=1`: compose.secure.yaml too

    def environ(self) -> dict[str, str]:
        # The test's .env decides, not a password or folder that happens to be in this shell.
        drop = {
            "COUCHDB_PASSWORD",
            "COUCHDB_SINK_PASSWORD",
            "COUCHDB_READER_PASSWORD",
            "GRAFANA_ADMIN_PASSWORD",
            "WEIGHTS_DIR",
            "CIFAR_DIR",
            "COMPOSE_CMD",
        }
        environ = {k: v for k, v in self.engine.environ().items() if k not in drop}
        # Where make writes the secret files (beside the settings file), for Compose run by hand.
        return environ | {"SECRETS_DIR": str(self.env_file.parent / ".secrets")}

    def make(self, target: str, *args: str, timeout: float = 900) -> None:
        """`make TARGET COMPOSE_ENV=...` as a user runs it; its output goes to a log file."""
        log = self.workdir / f"make-{target}.log"
        with log.open("a") as out:
            result = subprocess.run(
                [
                    "make",
                    "--no-print-directory",
                    target,
                    f"COMPOSE_ENV={self.env_file}",
                    *self.make_args(),
                    *args,
                ],
                cwd=REPO,
                env=self.environ(),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if result.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
            raise AssertionError(f"make {target} exited {result.returncode}:\n{tail}\n{self.diagnostics()}")

    def make_args(self) -> list[str]:
        return ["SECURE=1"] if self.secure else []

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Compose itself, with the Makefile's project, env file and compose files."""
        command = [*compose_cli(), "-p", PROJECT, "--env-file", str(self.env_file)]
        command += ["-f", str(COMPOSE_DIR / "compose.yaml")]
        if self.secure:
            command += ["-f", str(COMPOSE_DIR / "compose.secure.yaml")]
        command += args
        return subprocess.run(
            command,
            cwd=REPO,
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def containers(self) -> list[dict[str, Any]]:
        """`docker inspect` of every container of the project, running or not."""
        ids = self.engine.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}")
        if not ids.stdout.split():
            return []
        found: list[dict[str, Any]] = json.loads(self.engine.docker("inspect", *ids.stdout.split()).stdout)
        return found

    def diagnostics(self) -> str:
        states = "\n".join(describe(c) for c in self.containers())
        logs = self.compose("logs", "--no-color", "--tail=40", timeout=120)
        return f"containers:\n{states}\nlogs (last lines):\n{logs.stdout[-12000:]}{logs.stderr[-2000:]}"

    @property
    def couchdb(self) -> str:
        return f"http://127.0.0.1:{self.settings['COUCHDB_HOST_PORT']}"

    @property
    def auth(self) -> tuple[str, str]:
        """The reader couchdb-setup made: looking at the data needs no more."""
        return ("iot_reader", self.settings["COUCHDB_READER_PASSWORD"])

    @property
    def kafka(self) -> str:
        return f"127.0.0.1:{self.settings['KAFKA_HOST_PORT']}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.settings['PROMETHEUS_HOST_PORT']}"

    @property
    def alertmanager(self) -> str:
        return f"http://127.0.0.1:{self.settings['ALERTMANAGER_HOST_PORT']}"


def service(container: dict[str, Any]) -> str:
    return str(container["Config"]["Labels"].get("com.docker.compose.service", "?"))


def has_healthcheck(container: dict[str, Any]) -> bool:
    test = (container["Config"].get("Healthcheck") or {}).get("Test") or ["NONE"]
    return bool(test != ["NONE"])


def reported_healthy(container: dict[str, Any]) -> bool:
    """Healthy now, or a probe passed before it exited (the producer finishes its work)."""
    health = container["State"].get("Health", {})
    return health.get("Status") == "healthy" or any(p["ExitCode"] == 0 for p in health.get("Log") or [])


def describe(container: dict[str, Any]) -> str:
    state = container["State"]
    health = state.get("Health", {}).get("Status", "no health check")
    return f"  {container['Name'].lstrip('/')}: {state['Status']} (exit {state['ExitCode']}), {health}"


def settled(container: dict[str, Any]) -> bool:
    """Up and healthy; or a one-shot service (topics, couchdb-setup, the producer...) that has finished with 0."""
    state = container["State"]
    if service(container) in FINISHING and state["Status"] == "exited":
        return bool(state["ExitCode"] == 0)
    if state["Status"] != "running":
        return False
    return not has_healthcheck(container) or state.get("Health", {}).get("Status") == "healthy"


def wait_settled(stack: Stack, services: set[str]) -> list[dict[str, Any]]:
    def all_settled() -> list[dict[str, Any]] | None:
        found = stack.containers()
        running = {service(c) for c in found}
        if not services <= running:
            return None
        for container in found:
            state = container["State"]
            if (state["Status"] == "exited" and state["ExitCode"] != 0) or state.get("Restarting"):
                raise AssertionError(f"{describe(container)}\n{stack.diagnostics()}")
        return found if all(settled(c) for c in found) else None

    try:
        return wait_for("every container healthy or finished", all_settled, SETTLE_TIMEOUT_S)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{stack.diagnostics()}") from None


def stored(stack: Stack) -> dict[str, dict[str, Any]]:
    """img_db's documents by ID ({} while the database does not exist yet)."""
    try:
        response = requests.get(
            f"{stack.couchdb}/img_db/_all_docs", params={"include_docs": "true"}, auth=stack.auth, timeout=10
        )
    except requests.RequestException:
        return {}
    if response.status_code == 404:
        return {}
    response.raise_for_status()
    return {row["id"]: row["doc"] for row in response.json()["rows"]}


def complete(doc: dict[str, Any]) -> bool:
    return "GroundTruth" in doc and "InferredValue" in doc and "image.png" in doc.get("_attachments", {})


def wait_complete(stack: Stack, count: int) -> dict[str, dict[str, Any]]:
    def enough() -> dict[str, dict[str, Any]] | None:
        docs = {i: d for i, d in stored(stack).items() if complete(d)}
        return docs if len(docs) >= count else None

    try:
        return wait_for(f"{count} complete documents in img_db", enough, FLOW_TIMEOUT_S)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{stack.diagnostics()}") from None


@pytest.fixture(scope="module")
def stack(
    dockerd: Dockerd, image_build_args: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("compose")
    started = time.monotonic()
    images = standins.ensure_all(dockerd.command, dockerd.env)
    settings = {
        **env_example(),
        "COUCHDB_PASSWORD": secrets.token_urlsafe(18),
        "COUCHDB_SINK_PASSWORD": secrets.token_urlsafe(18),
        "COUCHDB_READER_PASSWORD": secrets.token_urlsafe(18),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(18),
        "COMPOSE_PROFILES": "",  # no Grafana: it has no stand-in
        "ZOOKEEPER_IMAGE": images["confluentinc/cp-zookeeper:7.7.1"],
        "KAFKA_IMAGE": images["confluentinc/cp-kafka:7.7.1"],
        "COUCHDB_IMAGE": images["couchdb:3.5.0"],
        "PROMETHEUS_IMAGE": images["prom/prometheus:v3.1.0"],
        "ALERTMANAGER_IMAGE": images["prom/alertmanager:v0.28.1"],
        # PYTHON_IMAGE, TORCH_INDEX_URL, WEIGHTS_URL, CIFAR_URL, CIFAR_MD5, BUILD_CA_CERTS
        **image_build_args,
        "PRODUCER_COUNT": str(IMAGES_SENT),
        "PRODUCER_INTERVAL_SECONDS": str(PRODUCER_INTERVAL_S),
        "KAFKA_HOST_PORT": str(free_port()),
        "COUCHDB_HOST_PORT": str(free_port()),
        "COUCHDB_TLS_HOST_PORT": str(free_port()),
        "PROMETHEUS_HOST_PORT": str(free_port()),
        "ALERTMANAGER_HOST_PORT": str(free_port()),
        "GRAFANA_HOST_PORT": str(free_port()),
    }
    env_file = workdir / "compose.env"
    write_env(env_file, settings)
    up = Stack(dockerd, env_file, settings, workdir, {"import stand-ins": time.monotonic() - started})
    try:
        # Whatever an earlier, killed run left (the daemon's data root is kept between runs),
        # SECURE=1's one-shots included.
        replace(up, secure=True).make("down", "V=1")
        started = time.monotonic()
        up.make("up", timeout=UP_TIMEOUT_S)
        up.timings["make up (build + start)"] = time.monotonic() - started
        wait_settled(
            up, {"zookeeper", "kafka", "topics", "couchdb", "couchdb-setup", "inference", "sink", "producer"}
        )
        up.timings["make up to all healthy"] = time.monotonic() - started
        yield up
    finally:
        try:
            up.make("down", "V=1", timeout=600)
            left = up.containers()
            volumes = dockerd.docker(
                "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"
            )
            assert not left and not volumes.stdout.split(), "make down V=1 left containers or volumes"
        finally:
            print("\ncompose stack timings (s):", {k: round(v) for k, v in up.timings.items()})


# --- the tests, in order ----------------------------------------------------------------------


def test_every_container_with_a_health_check_is_healthy(stack: Stack) -> None:
    containers = wait_settled(
        stack, {"zookeeper", "kafka", "topics", "couchdb", "couchdb-setup", "inference", "sink", "producer"}
    )
    by_service = {service(c): c for c in containers}
    checked = {name for name, c in by_service.items() if has_healthcheck(c)}
    # compose.yaml's own checks, and the HEALTHCHECK of each built image.
    assert {"zookeeper", "kafka", "couchdb", "inference", "sink", "producer"} <= checked, checked
    assert not {"topics", "couchdb-setup"} & checked, "the one-shot containers serve no health port"
    for name in checked - {"producer"}:
        assert by_service[name]["State"]["Health"]["Status"] == "healthy", describe(by_service[name])
    # The producer started only once the others were ready; it reports ready while it sends,
    # then exits 0 (test_images_flow_into_couchdb). The one-shot topics and couchdb-setup exited 0.
    producer = wait_for(
        "the producer's health check to pass",
        lambda: next(
            (c for c in stack.containers() if service(c) == "producer" and reported_healthy(c)), None
        ),
        60,
    )
    assert producer["State"]["Status"] == "running" or producer["State"]["ExitCode"] == 0, describe(producer)
    assert by_service["topics"]["State"]["ExitCode"] == 0
    assert by_service["couchdb-setup"]["State"]["ExitCode"] == 0


def test_no_password_in_any_containers_inspect(stack: Stack) -> None:
    """The passwords are files in /run/secrets: `docker inspect` shows none, but CouchDB's admin
    password to the couchdb container (its image reads it from the environment only)."""
    passwords = {name: value for name, value in stack.settings.items() if name.endswith("_PASSWORD")}
    assert len(passwords) == 4
    for container in stack.containers():
        shown = json.dumps(container)
        allowed = {"COUCHDB_PASSWORD"} if service(container) == "couchdb" else set()
        leaked = {name for name, value in passwords.items() if value in shown} - allowed
        assert not leaked, f"{service(container)}: docker inspect shows {sorted(leaked)}"
    sink = next(c for c in stack.containers() if service(c) == "sink")
    assert "/run/secrets/iot_couchdb_password" in {m["Destination"] for m in sink["Mounts"]}


def test_images_flow_into_couchdb(stack: Stack) -> None:
    started = time.monotonic()
    docs = wait_complete(stack, IMAGES_SENT)
    stack.timings["images stored"] = time.monotonic() - started
    assert len(docs) == IMAGES_SENT, sorted(docs)
    some_id = next(iter(docs))
    png = requests.get(f"{stack.couchdb}/img_db/{some_id}/image.png", auth=stack.auth, timeout=10)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), png.status_code

    # The images can be stored before the producer has finished its own exit (flush, summary).
    def producer_exited() -> dict[str, Any] | None:
        producer = next(c for c in stack.containers() if service(c) == "producer")
        return producer if producer["State"]["Status"] == "exited" else None

    producer = wait_for("the producer to exit", producer_exited, 60)
    assert producer["State"]["ExitCode"] == 0, describe(producer)


def test_prometheus_scrapes_inference_sink_and_couchdb(stack: Stack) -> None:
    def up_jobs() -> set[str] | None:
        try:
            response = requests.get(f"{stack.prometheus}/api/v1/targets", timeout=5)
        except requests.RequestException:
            return None
        targets = response.json()["data"]["activeTargets"] if response.status_code == 200 else []
        jobs = {t["labels"]["job"] for t in targets if t["health"] == "up"}
        return jobs if {"inference", "sink", "couchdb"} <= jobs else None

    wait_for("Prometheus scraping inference, sink and CouchDB's own metrics", up_jobs, 60)


def test_prometheus_sends_its_alerts_to_an_alertmanager_that_is_ready(stack: Stack) -> None:
    def both() -> list[str] | None:
        try:
            ready = requests.get(f"{stack.alertmanager}/-/ready", timeout=5)
            listed = requests.get(f"{stack.prometheus}/api/v1/alertmanagers", timeout=5)
        except requests.RequestException:
            return None
        if ready.status_code != 200 or listed.status_code != 200:
            return None
        active = [am["url"] for am in listed.json()["data"]["activeAlertmanagers"]]
        return active if any("//alertmanager:9093/" in url for url in active) else None

    wait_for("Alertmanager ready on 127.0.0.1 and active in Prometheus", both, 60)


def consumer_group(stack: Stack, group: str) -> dict[str, set[int]]:
    """Member -> partitions of iot-topic it holds, from the broker's description of the group."""
    admin = AdminClient({"bootstrap.servers": stack.kafka})
    description = admin.describe_consumer_groups([group])[group].result(timeout=15)
    return {
        f"{m.client_id}@{m.host}": {
            tp.partition for tp in m.assignment.topic_partitions if tp.topic == "iot-topic"
        }
        for m in description.members
    }


def test_two_inference_members_split_the_partitions(stack: Stack) -> None:
    result = stack.compose("up", "-d", "--no-build", "--no-deps", "--scale", "inference=2", "inference")
    assert result.returncode == 0, result.stderr
    members = [c for c in wait_settled(stack, {"inference"}) if service(c) == "inference"]
    assert len(members) == 2 and all(settled(c) for c in members), [describe(c) for c in members]

    def split() -> dict[str, set[int]] | None:
        assignment = consumer_group(stack, "inference")
        held = [p for partitions in assignment.values() for p in partitions]
        fair = len(assignment) == 2 and all(assignment.values())
        return assignment if fair and sorted(held) == list(range(PARTITIONS)) else None

    assignment = wait_for("the 3 partitions of iot-topic split over 2 inference members", split, 120)
    assert sorted(len(p) for p in assignment.values()) == [1, 2], assignment


def test_make_down_then_up_keeps_the_data(stack: Stack) -> None:
    before = {i for i, d in stored(stack).items() if complete(d)}
    assert len(before) >= IMAGES_SENT
    stack.make("down")
    assert not stack.containers(), "make down left containers"
    volumes = stack.engine.docker("volume", "ls", "-q").stdout.split()
    assert f"{PROJECT}_couchdb-data" in volumes and f"{PROJECT}_kafka-data" in volumes, volumes
    started = time.monotonic()
    stack.make("up", timeout=UP_TIMEOUT_S)
    wait_settled(
        stack, {"zookeeper", "kafka", "topics", "couchdb", "couchdb-setup", "inference", "sink", "producer"}
    )
    stack.timings["make up again to all healthy"] = time.monotonic() - started
    # The producer runs again: its images join the ones stored before, which are all still there.
    after = wait_complete(stack, len(before) + IMAGES_SENT)
    assert before <= set(after), sorted(before - set(after))


# --- make up SECURE=1: the same images, Kafka with SASL_SSL and ACLs --------------------------


@pytest.fixture(scope="module")
def secure_stack(stack: Stack) -> Iterator[Stack]:
    """The stack again, on fresh volumes, with `make up SECURE=1`: the images built above are reused."""
    stack.make("down", "V=1")
    secure = replace(stack, secure=True)
    started = time.monotonic()
    try:
        secure.make("up", timeout=UP_TIMEOUT_S)
        wait_settled(secure, SERVICES | {"kafka-admin-login", "kafka-access"})
        stack.timings["make up SECURE=1 to all healthy"] = time.monotonic() - started
        yield secure
    finally:
        secure.make("down", "V=1", timeout=600)


def test_secure_images_flow_over_sasl_ssl_into_couchdb_over_tls(secure_stack: Stack) -> None:
    docs = wait_complete(secure_stack, IMAGES_SENT)
    assert len(docs) == IMAGES_SENT, sorted(docs)
    envs = {
        service(c): dict(item.split("=", 1) for item in c["Config"]["Env"]) for c in secure_stack.containers()
    }
    for name, user in (("producer", "iot-producer"), ("inference", "iot-inference"), ("sink", "iot-sink")):
        env = envs[name]
        assert env["IOT_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["IOT_KAFKA_USERNAME"] == user, name
        assert "IOT_KAFKA_PASSWORD" not in env, f"{name}: its Kafka password is a secret file"
    # The sink stored them over CouchDB's TLS, the only CouchDB address it has; the port answers
    # with a certificate the stack's CA signed.
    assert envs["sink"]["IOT_COUCHDB_URL"] == "https://couchdb:6984", envs["sink"]["IOT_COUCHDB_URL"]
    tls = f"https://127.0.0.1:{secure_stack.settings['COUCHDB_TLS_HOST_PORT']}"
    ca = secure_stack.env_file.parent / ".secrets" / "ca.pem"
    assert requests.get(f"{tls}/_up", verify=str(ca), timeout=10).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{tls}/_up", timeout=10)  # the system's CAs do not know it


def test_secure_kafka_refuses_clients_without_a_login(secure_stack: Stack) -> None:
    ca = secure_stack.env_file.parent / ".secrets" / "ca.pem"
    attempts = {
        "PLAINTEXT": {"security.protocol": "PLAINTEXT"},
        "TLS without a login": {"security.protocol": "SSL", "ssl.ca.location": str(ca)},
        "a wrong password": {
            "security.protocol": "SASL_SSL",
            "ssl.ca.location": str(ca),
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "iot-producer",
            "sasl.password": "not-its-password",
        },
    }
    for what, config in attempts.items():
        # log_level 0: librdkafka would log every refused attempt, many per second.
        client = AdminClient({"bootstrap.servers": secure_stack.kafka, "log_level": 0, **config})
        try:
            client.list_topics(timeout=10)
        except KafkaException:
            continue
        pytest.fail(f"Kafka answered a client with {what}")
