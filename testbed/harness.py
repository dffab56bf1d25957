"""Drive the real services as subprocesses against the real broker and CouchDB.

Each test gets its own topics, consumer groups and database, so tests never see each other's
messages and can run against a stack that `make run` also uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from iot_shared.couch import client_for
from iot_shared.kafka import ensure_topics
from iot_shared.schema import ImageMessage
from iot_shared.settings import ServiceSettings
from iot_sink.couch_setup import prepare_database
from iot_sink.documents import is_complete
from testbed.paths import CIFAR_DIR, WEIGHTS
from testbed.waiting import wait_for


@dataclass(frozen=True)
class Stack:
    """Where the servers are. `couchdb_user` is CouchDB's server admin (the tests' own view); the
    sink logs in as `sink_user`, which stack.sh's `iot-couchdb-setup` made. `couchdb_metrics_url`
    serves `/_node/_local/_prometheus` without login (CouchDB's `[prometheus] additional_port`),
    "" where unknown. A CouchDB cluster is reached through `couchdb_url`, its first node, by the
    tests, and through every node's URL (`couchdb_nodes`) by the services."""

    bootstrap: str
    couchdb_url: str
    couchdb_user: str
    couchdb_password: str
    couchdb_metrics_url: str = ""
    couchdb_nodes: tuple[str, ...] = ()
    kafka_metrics_url: str = ""  # the first broker's JMX exporter; "" where unknown
    sink_user: str = "iot_sink"
    sink_password: str = "local-dev-only"

    @property
    def service_couchdb_url(self) -> str:
        """IOT_COUCHDB_URL for the services: every node of a cluster, separated by commas."""
        return ",".join(self.couchdb_nodes) or self.couchdb_url

    def couch(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A request to CouchDB, as the server admin unless `auth` says otherwise."""
        auth = kwargs.pop("auth", (self.couchdb_user, self.couchdb_password))
        timeout = kwargs.pop("timeout", 60)
        return requests.request(method, f"{self.couchdb_url}/{path}", auth=auth, timeout=timeout, **kwargs)


class Service:
    """One service (`python -m iot_<role>`) in its own process, with its log in a file."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.module = module
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.ended_on_purpose = False

    def start(self) -> Service:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as `docker stop` sends it; returns the exit code."""
        assert self.proc is not None
        self.ended_on_purpose = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{self.module} ignored SIGTERM:\n{self.log_tail()}") from None

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush or commit."""
        assert self.proc is not None
        self.ended_on_purpose = True
        self.proc.kill()
        self.proc.wait(30)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.module} still running after {timeout}s:\n{self.log_tail()}"
            ) from None


@dataclass
class Pipeline:
    """Topics, groups and database private to one test, and the services wired to them."""

    stack: Stack
    logs: Path
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    services: list[Service] = field(default_factory=list)

    @property
    def images_topic(self) -> str:
        return f"{self.name}-images"

    @property
    def predictions_topic(self) -> str:
        return f"{self.name}-predictions"

    @property
    def dlq_topic(self) -> str:
        return f"{self.name}-dlq"

    @property
    def db(self) -> str:
        return f"img_db_{self.name}"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "IOT_KAFKA_BOOTSTRAP_SERVERS": self.stack.bootstrap,
            "IOT_IMAGES_TOPIC": self.images_topic,
            "IOT_PREDICTIONS_TOPIC": self.predictions_topic,
            "IOT_DLQ_TOPIC": self.dlq_topic,
            "IOT_COUCHDB_URL": self.stack.service_couchdb_url,
            "IOT_COUCHDB_USER": self.stack.sink_user,
            "IOT_COUCHDB_PASSWORD": self.stack.sink_password,
            "IOT_COUCHDB_DB": self.db,
            "IOT_METRICS_PORT": "0",
            "IOT_WEIGHTS": str(WEIGHTS),
            "IOT_DATA_DIR": str(CIFAR_DIR),
            # The producer's unfinished-run state, private to this pipeline.
            "IOT_STATE_DIR": str(self.logs / f"{self.name}-producer-state"),
            **extra,
        }

    def prepare(self, partitions: int = 3) -> None:
        """This pipeline's topics, and its database as `iot-couchdb-setup` makes one: the sink is
        a member, not a server admin, so it cannot create it."""
        self.create_topics(partitions)
        self.create_database()

    def create_database(self) -> None:
        admin = client_for(self.stack.couchdb_url, self.stack.couchdb_user, self.stack.couchdb_password)
        prepare_database(admin, self.db)

    def create_topics(self, partitions: int = 3) -> None:
        settings = ServiceSettings(
            kafka_bootstrap_servers=self.stack.bootstrap,
            images_topic=self.images_topic,
            predictions_topic=self.predictions_topic,
            dlq_topic=self.dlq_topic,
        )
        topics = {self.images_topic: partitions, self.predictions_topic: partitions, self.dlq_topic: 1}
        assert sorted(ensure_topics(settings, topics)) == sorted(topics)

    def service(self, role: str, **extra: str) -> Service:
        """A service of this pipeline; each role has its own consumer group, as in production."""
        env = {**self.env(), "IOT_GROUP_ID": f"{self.name}-{role}", **extra}
        svc = Service(f"iot_{role}", env, self.logs / f"{self.name}-{role}-{len(self.services)}.log")
        self.services.append(svc)
        return svc

    def start(self, role: str, **extra: str) -> Service:
        return self.service(role, **extra).start()

    def produce(self, count: int, rate: str = "0", **extra: str) -> Service:
        """Run the real producer to completion: `count` test-set images at `rate` per second."""
        producer = self.start("producer", IOT_COUNT=str(count), IOT_RATE=rate, **extra)
        assert producer.wait(600) == 0, producer.log_tail()
        return producer

    def alive(self) -> None:
        for svc in self.services:
            if svc.module == "iot_producer" or svc.ended_on_purpose or svc.proc is None:
                continue
            if svc.proc.poll() is not None:
                raise AssertionError(f"{svc.module} exited with {svc.proc.returncode}:\n{svc.log_tail()}")

    def close(self) -> None:
        for svc in reversed(self.services):
            if svc.running:
                svc.stop()
        with contextlib.suppress(requests.RequestException):
            self.stack.couch("DELETE", self.db)

    # --- looking at the results -------------------------------------------------------

    def documents(self, attachments: bool = False) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = []
        params: dict[str, Any] = {"include_docs": "true", "limit": 1000}
        if attachments:
            params["attachments"] = "true"
        start = None
        while True:
            if start is not None:
                params["startkey"] = json.dumps(start)
                params["skip"] = 1
            response = self.stack.couch("GET", f"{self.db}/_all_docs", params=params)
            if response.status_code == 404:
                return []
            response.raise_for_status()
            rows = [r for r in response.json()["rows"] if not r["id"].startswith("_design/")]
            docs.extend(r["doc"] for r in rows)
            if len(response.json()["rows"]) < 1000:
                return docs
            start = response.json()["rows"][-1]["id"]

    def complete_documents(self) -> list[dict[str, Any]]:
        return [d for d in self.documents() if is_complete(d)]

    def wait_for_complete(self, count: int, timeout: float) -> list[dict[str, Any]]:
        return wait_for(
            f"{count} complete documents in {self.db}",
            lambda: docs if len(docs := self.complete_documents()) >= count else None,
            timeout,
            self.alive,
        )

    def send_raw(self, topic: str, values: list[bytes | None], key: str | None = None) -> None:
        producer = Producer({"bootstrap.servers": self.stack.bootstrap, "enable.idempotence": True})
        for value in values:
            producer.produce(topic, value=value, key=key)
        assert producer.flush(30) == 0

    def high_watermark(self, topic: str, partition: int) -> int:
        consumer = Consumer({"bootstrap.servers": self.stack.bootstrap, "group.id": f"{self.name}-offsets"})
        try:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        finally:
            consumer.close()
        return int(high)

    def delete_records(self, topic: str, partition: int, before: int) -> None:
        """Have the broker drop the partition's records below offset `before`, as if it lost them."""
        admin = AdminClient({"bootstrap.servers": self.stack.bootstrap})
        [future] = admin.delete_records([TopicPartition(topic, partition, before)]).values()
        assert future.result(timeout=30).low_watermark == before

    def audit(self, *args: str, **env: str) -> tuple[int, str, str]:
        """`iot-audit ARGS` of this pipeline (ENV overrides its settings): exit code, stdout, stderr."""
        result = subprocess.run(
            [sys.executable, "-m", "iot_sink.audit", *args],
            env={**os.environ, **self.env(), **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        return result.returncode, result.stdout, result.stderr

    def audit_report(self, **env: str) -> dict[str, Any]:
        """`iot-audit --json`'s report, whether or not it found problems."""
        code, out, err = self.audit("--json", **env)
        assert code in (0, 1), err
        report: dict[str, Any] = json.loads(out)
        return report

    def read_topic(self, topic: str, count: int, timeout: float = 60) -> list[Any]:
        consumer = Consumer(
            {
                "bootstrap.servers": self.stack.bootstrap,
                "group.id": f"{self.name}-reader-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topic])
        messages: list[Any] = []
        try:
            wait_for(
                f"{count} messages on {topic}",
                lambda: len(_extend(messages, consumer.consume(100, 0.5))) >= count,
                timeout,
                self.alive,
            )
        finally:
            consumer.close()
        return messages


def random_images(n: int) -> list[ImageMessage]:
    """`n` valid image messages with fresh IDs and random pixels, for tests that send their own."""
    rng = np.random.default_rng(n)
    return [
        ImageMessage.from_pixels(
            str(uuid.uuid4()), "cat", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), 1.0, "t"
        )
        for _ in range(n)
    ]


def _extend(acc: list[Any], batch: list[Any]) -> list[Any]:
    acc.extend(m for m in batch if m.error() is None)
    return acc
