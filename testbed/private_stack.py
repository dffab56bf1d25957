"""Servers of a test's own, which it may kill and restart at will.

The shared stack of `make test` must never go down under other tests, so fault tests run
`deploy/local/stack.sh` a second time, with their own run dir and free ports (CouchDB's metrics
port too): the whole stack (`PrivateStack`), Kafka alone (`PrivateKafka`) or CouchDB alone
(`PrivateCouch`). Broker or node K of a cluster listens on 127.0.0.K.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testbed.harness import Stack
from testbed.paths import REPO
from testbed.ports import free_port
from testbed.waiting import wait_for

STACK_SCRIPT = REPO / "deploy" / "local" / "stack.sh"
PASSWORD = "private-test-only"


def couch_env(run_dir: Path, port: int, nodes: int = 1) -> dict[str, str]:
    """stack.sh's settings for a CouchDB of NODES nodes in RUN_DIR on PORT (and free ports for
    its metrics and, in a cluster, Erlang distribution)."""
    return {
        "IOT_LOCAL_RUN_DIR": str(run_dir),
        "IOT_LOCAL_COUCHDB_PORT": str(port),
        "IOT_LOCAL_COUCHDB_METRICS_PORT": str(free_port()),
        "IOT_LOCAL_COUCHDB_TLS_PORT": str(free_port()),
        "IOT_LOCAL_COUCHDB_USER": "admin",
        "IOT_LOCAL_COUCHDB_PASSWORD": PASSWORD,
        "IOT_LOCAL_COUCHDB_NODES": str(nodes),
        "IOT_LOCAL_COUCHDB_DIST_PORT": str(free_port()),
    }


def kafka_env(run_dir: Path, port: int, brokers: int = 1, security: str = "plaintext") -> dict[str, str]:
    """stack.sh's settings for ZooKeeper and BROKERS brokers in RUN_DIR on PORT (and free ports
    for ZooKeeper and the brokers' metrics), PLAINTEXT or SASL_SSL (`security`)."""
    return {
        "IOT_LOCAL_RUN_DIR": str(run_dir),
        "IOT_LOCAL_ZOOKEEPER_PORT": str(free_port()),
        "IOT_LOCAL_KAFKA_PORT": str(port),
        "IOT_LOCAL_KAFKA_METRICS_PORT": str(free_port()),
        "IOT_LOCAL_KAFKA_BROKERS": str(brokers),
        "IOT_LOCAL_KAFKA_SECURITY": security,
    }


def names(kind: str, count: int) -> list[str]:
    """stack.sh's names of a cluster's members: couchdb, couchdb2, ...; kafka, kafka2, ..."""
    return [kind, *(f"{kind}{k}" for k in range(2, count + 1))]


def couch_urls(port: int, nodes: int) -> tuple[str, ...]:
    return tuple(f"http://127.0.0.{k}:{port}" for k in range(1, nodes + 1))


def bootstrap(port: int, brokers: int) -> str:
    return ",".join(f"127.0.0.{k}:{port}" for k in range(1, brokers + 1))


class PrivateServers:
    """Some of stack.sh's servers (`names`; none = all of them) in a run dir of their own."""

    def __init__(self, run_dir: Path, env: dict[str, str], names: list[str], log_file: Path | None) -> None:
        self.run_dir = run_dir
        self.env = env
        self.names = names
        self.log_file = log_file  # stack.sh's own output; None = the test's

    def start(self, *names: str) -> None:
        """Start the named servers (all by default) that are not running; stack.sh waits until
        they answer (a restarted broker first waits out its dead self's ZooKeeper session)."""
        self._script("start", *(names or self.names))

    def stop(self, *names: str) -> None:
        self._script("stop", *(names or self.names))

    def kill(self, name: str) -> None:
        """`kill -9` one server: a crash, with no clean shutdown."""
        _signal(self.run_dir, name, signal.SIGKILL, wait=True)

    @contextmanager
    def down(self, name: str) -> Iterator[None]:
        """`name` is stopped inside the block and started again after it."""
        self.stop(name)
        try:
            yield
        finally:
            self.start(name)

    def pid(self, name: str) -> int | None:
        return _pid(self.run_dir, name)

    def _script(self, *args: str) -> None:
        env = {**os.environ, **self.env}
        if self.log_file is None:
            subprocess.run([str(STACK_SCRIPT), *args], env=env, check=True, timeout=600)
            return
        with self.log_file.open("ab") as log:
            subprocess.run(
                [str(STACK_SCRIPT), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=600,
            )


class PrivateStack(PrivateServers):
    """ZooKeeper, Kafka (KAFKA_BROKERS brokers) and CouchDB (COUCHDB_NODES nodes)."""

    def __init__(
        self, run_dir: Path, couchdb_nodes: int = 1, kafka_brokers: int = 1, log_file: Path | None = None
    ) -> None:
        kafka_port, couch_port = free_port(), free_port()
        env = {
            **kafka_env(run_dir, kafka_port, kafka_brokers),
            **couch_env(run_dir, couch_port, couchdb_nodes),
        }
        super().__init__(run_dir, env, [], log_file)
        self.couchdb_names = names("couchdb", couchdb_nodes)
        self.kafka_names = names("kafka", kafka_brokers)
        nodes = couch_urls(couch_port, couchdb_nodes)
        self.stack = Stack(
            bootstrap=bootstrap(kafka_port, kafka_brokers),
            couchdb_url=nodes[0],
            couchdb_user="admin",
            couchdb_password=PASSWORD,
            couchdb_metrics_url=f"http://127.0.0.1:{env['IOT_LOCAL_COUCHDB_METRICS_PORT']}",
            couchdb_nodes=nodes if couchdb_nodes > 1 else (),
            kafka_metrics_url=f"http://127.0.0.1:{env['IOT_LOCAL_KAFKA_METRICS_PORT']}",
        )


class PrivateKafka(PrivateServers):
    """ZooKeeper and BROKERS brokers of the test's own, beside the shared stack's CouchDB."""

    def __init__(self, stack: Stack, run_dir: Path, brokers: int = 1, security: str = "plaintext") -> None:
        port = free_port()
        super().__init__(
            run_dir,
            kafka_env(run_dir, port, brokers, security),
            ["zookeeper", *names("kafka", brokers)],
            None,
        )
        self.brokers = names("kafka", brokers)
        self.stack = dataclasses.replace(
            stack,
            bootstrap=bootstrap(port, brokers),
            kafka_metrics_url=f"http://127.0.0.1:{self.env['IOT_LOCAL_KAFKA_METRICS_PORT']}",
        )


class PrivateCouch(PrivateServers):
    """A CouchDB of the test's own, set up like the shared one (`iot-couchdb-setup`), beside the
    shared stack's broker. With NODES > 1, a cluster."""

    def __init__(self, stack: Stack, run_dir: Path, nodes: int = 1) -> None:
        port = free_port()
        super().__init__(run_dir, couch_env(run_dir, port, nodes), names("couchdb", nodes), None)
        urls = couch_urls(port, nodes)
        self.stack = Stack(
            stack.bootstrap, urls[0], "admin", PASSWORD, couchdb_nodes=urls if nodes > 1 else ()
        )
        # CouchDB's own TLS port, with a certificate signed by the run dir's CA.
        self.tls_url = f"https://127.0.0.1:{self.env['IOT_LOCAL_COUCHDB_TLS_PORT']}"
        self.ca_file = run_dir / "tls" / "ca.pem"


def _pid(run_dir: Path, name: str) -> int | None:
    try:
        return int((run_dir / f"{name}.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _signal(run_dir: Path, name: str, sig: signal.Signals, wait: bool) -> None:
    pid = _pid(run_dir, name)
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if wait:
        # Not our child (stack.sh detaches it): poll until it is gone.
        _wait_gone(pid)


def _wait_gone(pid: int, timeout: float = 60) -> None:
    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().split(") ", 1)[1].startswith("Z")
        except FileNotFoundError:
            return True

    wait_for(f"process {pid} to exit", gone, timeout)


@contextmanager
def running(servers: PrivateServers) -> Iterator[PrivateServers]:
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


@contextmanager
def private_couch(stack: Stack, run_dir: Path, nodes: int = 1) -> Iterator[PrivateCouch]:
    couch = PrivateCouch(stack, run_dir, nodes)
    with running(couch):
        yield couch


@contextmanager
def private_kafka(
    stack: Stack, run_dir: Path, brokers: int = 1, security: str = "plaintext"
) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(stack, run_dir, brokers, security)
    with running(kafka):
        yield kafka


@contextmanager
def private_stack(run_dir: Path, kafka_brokers: int = 1) -> Iterator[PrivateStack]:
    stack = PrivateStack(run_dir, kafka_brokers=kafka_brokers)
    with running(stack):
        yield stack
