"""A broker and CouchDB of a test's own, which it may kill and restart at will.

The shared stack of `make test` must never go down under other tests, so fault tests run
`deploy/local/stack.sh` a second time, with their own run dir and free ports (CouchDB's metrics
port too).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.integration.harness import Stack
from tests.paths import REPO
from tests.ports import free_port
from tests.waiting import wait_for

STACK_SCRIPT = REPO / "deploy" / "local" / "stack.sh"
COMPONENTS = ("zookeeper", "kafka", "couchdb")
PASSWORD = "private-test-only"


def couch_env(run_dir: Path, port: int, nodes: int = 1) -> dict[str, str]:
    """stack.sh's settings for a CouchDB of NODES nodes in RUN_DIR on PORT (and free ports for
    its metrics and, in a cluster, Erlang distribution)."""
    return {
        "IOT_LOCAL_RUN_DIR": str(run_dir),
        "IOT_LOCAL_COUCHDB_PORT": str(port),
        "IOT_LOCAL_COUCHDB_METRICS_PORT": str(free_port()),
        "IOT_LOCAL_COUCHDB_USER": "admin",
        "IOT_LOCAL_COUCHDB_PASSWORD": PASSWORD,
        "IOT_LOCAL_COUCHDB_NODES": str(nodes),
        "IOT_LOCAL_COUCHDB_DIST_PORT": str(free_port()),
    }


def couch_names(nodes: int) -> list[str]:
    """stack.sh's names of the CouchDB nodes: couchdb, couchdb2, couchdb3, ..."""
    return ["couchdb", *(f"couchdb{k}" for k in range(2, nodes + 1))]


def couch_urls(port: int, nodes: int) -> tuple[str, ...]:
    """Node K listens on 127.0.0.K."""
    return tuple(f"http://127.0.0.{k}:{port}" for k in range(1, nodes + 1))


class PrivateStack:
    """With COUCHDB_NODES > 1, CouchDB is a cluster: node K (`couchdbK`, node 1 is `couchdb`)."""

    def __init__(self, run_dir: Path, couchdb_nodes: int = 1) -> None:
        self.run_dir = run_dir
        ports = {name: free_port() for name in COMPONENTS}
        self.env = {
            "IOT_LOCAL_ZOOKEEPER_PORT": str(ports["zookeeper"]),
            "IOT_LOCAL_KAFKA_PORT": str(ports["kafka"]),
            **couch_env(run_dir, ports["couchdb"], couchdb_nodes),
        }
        self.couchdb_names = couch_names(couchdb_nodes)
        nodes = couch_urls(ports["couchdb"], couchdb_nodes)
        self.stack = Stack(
            bootstrap=f"127.0.0.1:{ports['kafka']}",
            couchdb_url=nodes[0],
            couchdb_user="admin",
            couchdb_password=PASSWORD,
            couchdb_metrics_url=f"http://127.0.0.1:{self.env['IOT_LOCAL_COUCHDB_METRICS_PORT']}",
            couchdb_nodes=nodes if couchdb_nodes > 1 else (),
        )

    def start(self) -> None:
        """Start whatever is not running (all of it at first) and wait until it answers."""
        self._script("start")

    def stop(self, name: str | None = None) -> None:
        if name is None:
            self._script("stop")
        else:
            self._signal(name, signal.SIGTERM, wait=True)

    def kill(self, name: str) -> None:
        """`kill -9` one component: a crash, with no clean shutdown."""
        self._signal(name, signal.SIGKILL, wait=True)

    @contextmanager
    def down(self, name: str) -> Iterator[None]:
        """`name` is stopped inside the block and started again after it."""
        self.stop(name)
        try:
            yield
        finally:
            self.start()

    def pid(self, name: str) -> int | None:
        return _pid(self.run_dir, name)

    def _signal(self, name: str, sig: signal.Signals, wait: bool) -> None:
        _signal(self.run_dir, name, sig, wait)

    def _script(self, command: str) -> None:
        subprocess.run([str(STACK_SCRIPT), command], env={**os.environ, **self.env}, check=True, timeout=600)


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


class PrivateCouch:
    """A CouchDB of the test's own (`stack.sh start couchdb` with its own run dir and port), set
    up like the shared one (`iot-couchdb-setup`), that it may stop and start at will, keeping its
    data. With NODES > 1, a cluster: node K (`couchdbK`, node 1 is `couchdb`) on 127.0.0.K."""

    def __init__(self, stack: Stack, run_dir: Path, nodes: int = 1) -> None:
        port = free_port()
        self.run_dir = run_dir
        self.names = couch_names(nodes)
        self.env = {**os.environ, **couch_env(run_dir, port, nodes)}
        urls = couch_urls(port, nodes)
        self.stack = Stack(
            stack.bootstrap, urls[0], "admin", PASSWORD, couchdb_nodes=urls if nodes > 1 else ()
        )

    def start(self, *names: str) -> None:
        """Start the named nodes (all by default) and wait until they answer (stack.sh waits)."""
        self._script("start", *(names or self.names))

    def stop(self, *names: str) -> None:
        self._script("stop", *(names or self.names))

    def kill(self, name: str) -> None:
        """`kill -9` one node: a crash, with no clean shutdown."""
        _signal(self.run_dir, name, signal.SIGKILL, wait=True)

    def _script(self, *args: str) -> None:
        subprocess.run([str(STACK_SCRIPT), *args], env=self.env, check=True, timeout=300)


@contextmanager
def private_couch(stack: Stack, run_dir: Path, nodes: int = 1) -> Iterator[PrivateCouch]:
    couch = PrivateCouch(stack, run_dir, nodes)
    couch.start()
    try:
        yield couch
    finally:
        couch.stop()


@contextmanager
def private_stack(run_dir: Path) -> Iterator[PrivateStack]:
    stack = PrivateStack(run_dir)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
