"""The chaos run: the real services on a private stack, faults fired on conditions, then the audit.

Every fault waits until its victim is busy, judged from the victim's own /metrics (each process
has its own port): it has consumed records since it started and is consuming right now, so it
holds partitions. A kill on a timer would often hit an idle member and prove nothing. After the
fault the victim is restarted at once (as systemd or Compose would) and the step ends when it
serves again. A service that exits when nobody asked it to is restarted too, and the crash is
kept with its log as evidence; one that keeps crashing ends the run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import shutil
import signal
import subprocess
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from prometheus_client.parser import text_string_to_metric_families

from iot_sink.audit import AuditSettings, Report, run_audit
from testbed.chaos.faults import Malformed, Role, Step, malformed_messages, near_limit_message
from testbed.harness import Pipeline, Service
from testbed.ports import free_port
from testbed.private_stack import PrivateStack
from testbed.waiting import wait_for

log = logging.getLogger("chaos")
# librdkafka's own logs (a refused connection every few ms while the broker is down) go to the
# run's chaos.log only, not to the terminal.
kafka_log = logging.getLogger("chaos.librdkafka")
kafka_log.propagate = False
kafka_log.addHandler(logging.NullHandler())

CONSUMED = "iot_kafka_consumed_messages_total"
DELIVERED = "iot_kafka_delivered_messages_total"
WRITTEN = "iot_sink_documents_written_total"
WRITE_RETRIES = "iot_sink_write_retries_total"
ASSIGNED = 'iot_consumer_rebalances_total{event="assign"}'
# Who must dead-letter a bad record of each topic (both consumers read the images topic).
DEAD_LETTERED_BY = {"images": ("inference", "sink"), "predictions": ("sink",)}
BUSY_WINDOW = 3.0  # "consuming right now": its counter grew within this many seconds
SCRAPE_EVERY = 0.5
SETTLE_EVERY = 5.0  # seconds between two audits while a CouchDB cluster settles
STALL_LIMIT = 10.0  # seconds: a cluster must take writes again this soon after losing a broker


class ChaosAbortError(Exception):
    """The run cannot go on (a service crash-loops, a step never recovers)."""


@dataclass
class ChaosConfig:
    run_dir: Path
    images: int = 10_000
    plan: list[Step] = field(default_factory=list)
    rate: float | None = None  # images per second; None = spread the run over the plan
    inference: int = 2
    sinks: int = 2
    partitions: int = 3
    step_timeout: float = 240.0  # for each precondition and each recovery
    drain_timeout: float = 600.0
    min_consumed: int = 20  # records a victim consumed since its start before it may be hit
    crash_limit: int = 5  # unexpected exits of one member before the run gives up
    static_membership: bool = True  # as Compose and Ansible deploy them: IOT_GROUP_INSTANCE_ID per instance
    couchdb_nodes: int = 1  # more: a CouchDB cluster (stack.sh's IOT_LOCAL_COUCHDB_NODES)
    kafka_brokers: int = 1  # more: a Kafka cluster (stack.sh's IOT_LOCAL_KAFKA_BROKERS)
    keep_data: bool = False

    @property
    def producer_rate(self) -> float:
        if self.rate is not None:
            return self.rate
        # About 15 s of traffic per step; the producer is re-run if the plan outlasts it.
        return round(max(5.0, self.images / (max(1, len(self.plan)) * 15.0)), 1)


@dataclass
class FaultRecord:
    step: str
    victim: str
    fired_at: float | None = None  # seconds since the run started
    waited: float | None = None  # for the precondition
    serving_after: float | None = None  # seconds from firing until the victim served again
    # A broker fault: the longest the producer could not write to some images partition, in s.
    stall: float | None = None
    ok: bool = False
    note: str = ""
    # Seconds from firing until each part of "serving again" first held (a member, a service).
    parts: dict[str, float] = field(default_factory=dict)

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


@dataclass
class Crash:
    member: str
    exit_code: int | None
    at: float
    after_step: str
    log_tail: str


@dataclass
class DeadLetterCheck:
    name: str
    topic: str
    partition: int
    offset: int
    accepted: list[str]
    dead_lettered_by: dict[str, str]
    ok: bool


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class ChaosResult:
    images: int
    rate: float
    run_id: str
    run_dir: str
    seconds: float
    faults: list[FaultRecord]
    crashes: list[Crash]
    producer_runs: list[dict[str, Any]]
    dead_letters: list[DeadLetterCheck]
    checks: list[Check]
    audit: Report | None
    run_audit: Report | None  # against the run's own IDs, recomputed: no broker trusted

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["audit"] = self.audit.to_json() if self.audit else None
        data["run_audit"] = self.run_audit.to_json() if self.run_audit else None
        data["ok"] = self.ok
        return data


class Member:
    """One slot of the pipeline (e.g. inference-1): a service restarted in place, same metrics port."""

    def __init__(self, role: Role, index: int, service: Service, port: int) -> None:
        self.role = role
        self.index = index
        self.service = service
        self.port = port
        self.starts = 0
        self.started_at = 0.0
        self.log_offset = 0
        self.expecting_exit = False
        self.finished = False  # the producer ended its run (exit 0) and was not re-run
        self.crashes = 0
        self.samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=40)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @property
    def running(self) -> bool:
        return self.service.running

    def start(self, **env: str) -> None:
        self.service.env.update(env)
        path = self.service.log_path
        self.log_offset = path.stat().st_size if path.exists() else 0
        self.samples.clear()
        self.expecting_exit = False
        self.finished = False
        self.service.start()
        self.starts += 1
        self.started_at = time.monotonic()

    def log_since_start(self, lines: int = 30) -> str:
        try:
            with self.service.log_path.open("rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        # Without librdkafka's own lines and the refused connections of a broker being down.
        kept = [
            line for line in text.splitlines() if not line.startswith("%") and "Connect to ipv4" not in line
        ]
        return "\n".join(kept[-lines:])

    def scrape(self) -> None:
        try:
            text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except requests.RequestException:
            return
        self.samples.append((time.monotonic(), parse_metrics(text)))

    def value(self, metric: str) -> float:
        return self.samples[-1][1].get(metric, 0.0) if self.samples else 0.0

    def value_at(self, metric: str, moment: float) -> float:
        """The counter at `moment`: its last sample before then, 0 if this process is younger."""
        if self.started_at >= moment:
            return 0.0
        before = [values for t, values in self.samples if t <= moment]
        return before[-1].get(metric, 0.0) if before else 0.0

    def grew(self, metric: str, since: float) -> bool:
        return self.running and self.value(metric) > self.value_at(metric, since)

    def busy(self, metric: str, min_count: int) -> bool:
        """Running, done real work since its start, and working right now (so it holds partitions)."""
        return (
            self.running
            and self.value(metric) >= min_count
            and self.grew(metric, time.monotonic() - BUSY_WINDOW)
        )


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format, {metric name: value} summed over labels, and per single label
    (`name{event="assign"}`)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            keys = [sample.name, *(f'{sample.name}{{{k}="{v}"}}' for k, v in sample.labels.items())]
            for key in keys:
                values[key] = values.get(key, 0.0) + sample.value
    return values


class DeadLetterTail:
    """Follows the dead-letter topic by assignment (no group): source record -> {service: reason}."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "logger": kafka_log,
                "group.id": f"chaos-dlq-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        self.consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self.seen: dict[tuple[str, int, int], dict[str, str]] = {}
        self.count = 0

    def poll(self, timeout: float = 0.0) -> None:
        for msg in self.consumer.consume(1000, timeout):
            if msg.error() is None:
                self._add(msg)

    def _add(self, msg: Message) -> None:
        raw = msg.headers() or []
        pairs = raw.items() if isinstance(raw, dict) else raw
        headers = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in pairs}
        with contextlib.suppress(KeyError, ValueError):
            source = (
                headers["dlq.source.topic"],
                int(headers["dlq.source.partition"]),
                int(headers["dlq.source.offset"]),
            )
            self.seen.setdefault(source, {})[headers.get("dlq.service", "?")] = headers.get("dlq.reason", "?")
        self.count += 1

    def catch_up(self, timeout: float = 60.0) -> None:
        """Read up to the high watermark as it is now."""
        _low, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            position = self.consumer.position([TopicPartition(self.topic, 0)])[0].offset
            if position >= high:
                return
            self.poll(1.0)

    def close(self) -> None:
        self.consumer.close()


class ClusterWatch:
    """What the broker faults read from the cluster: who leads the images topic, how far each of
    its partitions got, and whether any partition of any topic is under-replicated.

    Each question asks a new admin client: one that lived through a broker's death can keep
    asking the dead leader (librdkafka's metadata for it goes stale) and never answer again."""

    def __init__(self, bootstrap: str, topic: str, brokers: list[str]) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.brokers = brokers  # stack.sh's names; broker id K-1 is the K-th

    def _admin(self) -> AdminClient:
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": kafka_log}
        return AdminClient(config)

    def leader(self) -> str:
        """The broker that leads the most partitions of the images topic."""
        partitions = self._admin().list_topics(self.topic, timeout=10).topics[self.topic].partitions
        leaders = [p.leader for p in partitions.values()]
        return self.brokers[max(set(leaders), key=leaders.count)]

    def marks(self) -> dict[int, int]:
        """Each images partition's high watermark now; -1 for one that has no leader to answer."""
        admin = self._admin()
        try:
            partitions = admin.list_topics(self.topic, timeout=5).topics[self.topic].partitions
        except KafkaException:
            return {}
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # (confluent-kafka's own stub)
        futures = admin.list_offsets(
            {TopicPartition(self.topic, p): latest for p in partitions}, request_timeout=2
        )
        marks = {}
        for tp, future in futures.items():
            try:
                marks[tp.partition] = int(future.result(timeout=3).offset)
            except (KafkaException, concurrent.futures.TimeoutError):
                marks[tp.partition] = -1
        return marks

    def under_replicated(self) -> int:
        """Partitions, of every topic, with fewer replicas in sync than they have; -1 when unknown."""
        try:
            topics = self._admin().list_topics(timeout=5).topics.values()
        except KafkaException:
            return -1
        return sum(len(p.isrs) < len(p.replicas) for t in topics for p in t.partitions.values())


@dataclass
class Sent:
    malformed: Malformed
    topic: str
    partition: int = -1
    offset: int = -1


class ChaosRun:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.run_id = f"chaos-{uuid.uuid4().hex[:10]}"
        self.stack = PrivateStack(config.run_dir / "stack", config.couchdb_nodes, config.kafka_brokers)
        self.pipeline = Pipeline(self.stack.stack, config.run_dir / "logs", name=self.run_id)
        self.members: list[Member] = []
        self.faults: list[FaultRecord] = []
        self.crashes: list[Crash] = []
        self.producer_runs: list[dict[str, Any]] = []
        self.sent: list[Sent] = []
        self.remaining: list[Step] = []
        self.current_step = "start-up"
        self.t0 = time.monotonic()
        self.last_scrape = 0.0
        self.dlq: DeadLetterTail | None = None
        self.cluster: ClusterWatch | None = None

    # --- the run ---------------------------------------------------------------------

    def run(self) -> ChaosResult:
        """The whole run; everything it started is stopped before it returns or raises."""
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        self.pipeline.logs.mkdir(parents=True, exist_ok=True)
        with logging_to(self.config.run_dir / "chaos.log"):
            return self._run()

    def _run(self) -> ChaosResult:
        checks: list[Check] = []
        report: Report | None = None
        run_report: Report | None = None
        aborted = ""
        try:
            self._start()
            try:
                self._run_plan()
                self._finish_producer()
                self._drain()
            except ChaosAbortError as exc:
                aborted = str(exc)
                log.error("run aborted: %s", exc)
            self._stop_services()
            assert self.dlq is not None
            self.dlq.catch_up()
            try:
                report, run_report = self._audit(), self._audit(run_id=self.run_id)
            except Exception as exc:  # the run's evidence still gets reported
                log.exception("audit failed")
                checks = [Check("audit", False, f"the audit failed: {exc}")]
            else:
                checks = self._checks(report, run_report, aborted)
        finally:
            self._teardown()
        return ChaosResult(
            images=self.config.images,
            rate=self.config.producer_rate,
            run_id=self.run_id,
            run_dir=str(self.config.run_dir),
            seconds=round(time.monotonic() - self.t0, 1),
            faults=self.faults,
            crashes=self.crashes,
            producer_runs=self.producer_runs,
            dead_letters=self._dead_letter_checks(),
            checks=checks,
            audit=report,
            run_audit=run_report,
        )

    def _start(self) -> None:
        log.info("starting the private stack in %s", self.stack.run_dir)
        self.stack.start()
        self.pipeline.prepare(self.config.partitions)
        self.dlq = DeadLetterTail(self.stack.stack.bootstrap, self.pipeline.dlq_topic)
        self.cluster = ClusterWatch(
            self.stack.stack.bootstrap, self.pipeline.images_topic, self.stack.kafka_names
        )
        for role, count in (("inference", self.config.inference), ("sink", self.config.sinks)):
            for index in range(count):
                self._add_member(role, index).start()  # type: ignore[arg-type]
        wait_for(
            "every consumer to hold partitions",
            lambda: all(self._assigned(m) for m in self.consumers()),
            180,
            self.tick,
        )
        self.t0 = time.monotonic()
        self.remaining = list(self.config.plan)
        producer = self._add_member("producer", 0)
        self._start_producer(producer)

    def _add_member(self, role: Role, index: int) -> Member:
        port = free_port()
        # PYTHONFAULTHANDLER: a service that hangs on SIGTERM gets SIGABRT and logs its stacks.
        extra = {"IOT_METRICS_PORT": str(port), "IOT_LOG_LEVEL": "INFO", "PYTHONFAULTHANDLER": "1"}
        if role == "inference":
            extra["IOT_TORCH_THREADS"] = "1"  # two of them share two cores
        if role != "producer" and self.config.static_membership:
            extra["IOT_GROUP_INSTANCE_ID"] = f"{role}-{index}"
        if role == "producer":
            extra.update(
                IOT_COUNT=str(self.config.images),
                IOT_RUN_ID=self.run_id,
                IOT_STATE_DIR=str(self.config.run_dir / "producer-state"),
                IOT_SOURCE_ID="chaos",
            )
        member = Member(role, index, self.pipeline.service(role, **extra), port)
        self.members.append(member)
        return member

    def _start_producer(self, producer: Member, last: bool = False) -> None:
        # Once no fault is left to spread, a restart re-sends the run at full speed: same IDs either way.
        rate = 0.0 if last else self.config.producer_rate
        producer.start(IOT_RATE=str(rate))
        self.producer_runs.append(
            {"started_at": self._now(), "rate": rate, "after": self.current_step, "last": last}
        )

    def _run_plan(self) -> None:
        while self.remaining:
            step = self.remaining[0]
            self.current_step = step.label
            record = FaultRecord(step.label, "")
            self.faults.append(record)
            try:
                self._execute(step, record)
            except AssertionError as exc:  # a wait_for deadline
                record.add_note(str(exc).splitlines()[0])
                raise ChaosAbortError(f"{step.label}: {exc}") from None
            except ChaosAbortError as exc:
                record.add_note(str(exc).splitlines()[0])
                raise
            finally:
                self.remaining.pop(0)
            log.info(
                "%s on %s: fired at %.1fs, serving again after %s",
                step.label,
                record.victim,
                record.fired_at or 0,
                f"{record.serving_after:.1f}s" if record.serving_after is not None else "never",
            )

    def _execute(self, step: Step, record: FaultRecord) -> None:
        started = time.monotonic()
        if step.kind in ("kill", "sigterm"):
            assert step.role is not None
            self._signal_member(step, record, started)
        elif step.kind == "broker_kill":
            self._kill_broker(record, started)
        elif step.kind in ("leader_kill", "broker_wipe"):
            self._kill_leader(record, started, wipe=step.kind == "broker_wipe")
        elif step.kind == "rolling_restart":
            self._rolling_restart(record, started)
        elif step.kind == "couch_outage":
            self._couch_outage(step, record, started)
        elif step.kind == "couch_node_kill":
            self._kill_couch_node(record, started)
        else:
            messages = malformed_messages() if step.kind == "malformed" else [near_limit_message()]
            self._send_malformed(messages, record, started)

    # --- the faults -----------------------------------------------------------------

    def _signal_member(self, step: Step, record: FaultRecord, started: float) -> None:
        assert step.role is not None
        metric = DELIVERED if step.role == "producer" else CONSUMED
        minimum = (
            min(200, max(20, self.config.images // 10))
            if step.role == "producer"
            else self.config.min_consumed
        )
        role = step.role
        try:
            victim = wait_for(
                f"a busy {role} to hit",
                # The busy member restarted least often: kills spread over the members.
                lambda: min(
                    (m for m in self._role(role) if m.busy(metric, minimum)),
                    key=lambda m: m.starts,
                    default=None,
                ),
                self.config.step_timeout,
                self.tick,
            )
        except AssertionError:
            idle = ", ".join(self._describe(m.name) for m in self._role(role))
            raise AssertionError(
                f"timed out after {self.config.step_timeout:.0f}s waiting for a busy {role} to hit: {idle}"
            ) from None
        record.victim = victim.name
        record.waited = round(time.monotonic() - started, 1)
        fired = self._fire(record)
        victim.expecting_exit = True
        assert victim.service.proc is not None
        code: int | None = 0
        if step.kind == "kill":
            victim.service.proc.kill()
            victim.service.proc.wait(30)
            if role == "producer":
                self.producer_runs[-1].update(exit_code=-9, ended_at=self._now(), signal="SIGKILL")
        else:
            code = self._terminate(victim)
            record.note = f"exit code {code}" if code is not None else "ignored SIGTERM for 60s, killed"
            if code != 0:
                record.note += " (expected 0)"
        if role == "producer":
            self._start_producer(victim, last=len(self.remaining) <= 1)
        else:
            victim.start()
        wait_for(
            f"{victim.name} to serve again",
            # A producer's last run, at full speed, may send all and exit between two scrapes.
            lambda: (victim.running and victim.value(metric) > 0) or victim.finished,
            self.config.step_timeout,
            self.tick,
        )
        record.serving_after = round(time.monotonic() - fired, 1)
        record.ok = code == 0

    def _await_flowing(self, record: FaultRecord, started: float) -> None:
        """Until every consumer is busy and the producer delivering at the same moment."""
        producer = self._producer()
        probes = {m.name: self._busy_probe(m, CONSUMED) for m in self.consumers()}
        probes["producer delivering"] = lambda: producer.grew(DELIVERED, time.monotonic() - BUSY_WINDOW)
        self._await_together("every consumer busy and the producer delivering", probes)
        record.waited = round(time.monotonic() - started, 1)

    def _kill_broker(self, record: FaultRecord, started: float) -> None:
        record.victim = "kafka"
        producer = self._producer()
        self._await_flowing(record, started)
        fired = self._fire(record)
        self.stack.kill("kafka")
        self.stack.start()  # waits out the dead broker's ZooKeeper session, then for the new one
        back = time.monotonic()
        record.note = f"broker back after {back - fired:.1f}s"
        producer = self._producer()
        probes = {m.name: self._grew_probe(m, CONSUMED, back) for m in self.consumers()}
        probes["producer"] = lambda: producer.grew(DELIVERED, back) or producer.finished
        self._await_each("consuming and delivering after the broker restart", probes, record, fired)
        record.ok = True

    def _kill_leader(self, record: FaultRecord, started: float, wipe: bool) -> None:
        """kill -9 the broker that leads the most images partitions (and with `wipe`, delete its
        data too): the others take over its partitions, and once it is back it copies from them."""
        assert self.cluster is not None
        self._await_flowing(record, started)
        victim = record.victim = self.cluster.leader()
        before = self.cluster.marks()
        fired = self._fire(record)
        self.stack.kill(victim)
        if wipe:
            shutil.rmtree(self.stack.run_dir / f"{victim}-logs")
        self._await_writable(record, before, fired)
        probes = {m.name: self._grew_probe(m, CONSUMED, fired) for m in self.consumers()}
        self._await_each("every consumer consuming with a broker down", probes, record, fired)
        self.stack.start(victim)  # waits out the dead broker's ZooKeeper session, then for the new one
        self._await_in_sync(record, fired)
        record.ok = True

    def _rolling_restart(self, record: FaultRecord, started: float) -> None:
        """Each broker in turn stopped (a controlled shutdown hands its partitions over first) and
        started, the next only once no partition is under-replicated: how a redeploy rolls."""
        assert self.cluster is not None
        record.victim = ", ".join(self.stack.kafka_names)
        self._await_flowing(record, started)
        fired = self._fire(record)
        for broker in self.stack.kafka_names:
            before = self.cluster.marks()
            down = time.monotonic()
            self.stack.stop(broker)
            self._await_writable(record, before, down, broker)
            self.stack.start(broker)
            self._await_in_sync(record, down, broker)
        after = time.monotonic()
        probes = {m.name: self._grew_probe(m, CONSUMED, after) for m in self.consumers()}
        self._await_each("every consumer consuming after the roll", probes, record, fired)
        record.ok = True

    def _await_writable(
        self, record: FaultRecord, before: dict[int, int], since: float, label: str = ""
    ) -> None:
        """Until every images partition took records again (or the producer is done): the stall."""
        assert self.cluster is not None
        cluster, producer = self.cluster, self._producer()
        prefix = f"{label}: " if label else ""
        pending = {p: f"{prefix}{self.pipeline.images_topic}[{p}] written" for p in before}

        def all_written() -> bool:
            now = cluster.marks()
            for partition, name in list(pending.items()):
                if now.get(partition, -1) > before[partition] or producer.finished:
                    record.parts[name] = round(time.monotonic() - since, 1)
                    del pending[partition]
            return not pending

        try:
            wait_for(
                "every images partition taking records", all_written, self.config.step_timeout, self.tick
            )
        except AssertionError:
            raise AssertionError(f"timed out waiting for {', '.join(pending.values())}") from None
        stall = max(record.parts[f"{prefix}{self.pipeline.images_topic}[{p}] written"] for p in before)
        record.stall = max(stall, record.stall or 0.0)
        record.add_note(f"{prefix}stall {stall:.1f}s")

    def _await_in_sync(self, record: FaultRecord, since: float, label: str = "") -> None:
        assert self.cluster is not None
        cluster = self.cluster
        name = f"{label}: every replica in sync" if label else "every replica in sync"
        self._await_each(
            "no partition under-replicated", {name: lambda: cluster.under_replicated() == 0}, record, since
        )
        record.add_note(f"{name} after {record.parts[name]:.1f}s")

    def _couch_outage(self, step: Step, record: FaultRecord, started: float) -> None:
        record.victim = "couchdb"
        sinks = self._role("sink")
        fired = self._fire_when_sinks_write(record, started)
        for node in self.stack.couchdb_names:  # every node of a cluster
            self.stack.stop(node)
        # The outage's length is the fault itself; the services are watched all along.
        wait_for(
            "the outage to last",
            lambda: time.monotonic() >= fired + step.seconds,
            step.seconds + 60,
            self.tick,
        )
        retried = any(s.grew(WRITE_RETRIES, fired) for s in sinks)
        self.stack.start()
        back = time.monotonic()
        record.note = "sinks retried writes" if retried else "no sink retried a write during the outage"
        probes = {s.name: self._writing_probe(s, back) for s in sinks}
        self._await_each("every sink writing again", probes, record, fired)
        record.add_note(f"all writing {time.monotonic() - back:.1f}s after CouchDB was back")
        record.ok = True

    def _fire_when_sinks_write(self, record: FaultRecord, started: float) -> float:
        """Wait until every sink consumes and writes, then fire; returns when it fired.

        Once the producer has sent the whole run, its re-runs send images already stored, and
        a sink has nothing new to write: consuming is then all it can show (noted)."""
        sinks = self._role("sink")
        probes = {s.name: self._busy_probe(s, CONSUMED) for s in sinks}
        probes |= {f"{s.name} writing": self._or_all_sent(self._busy_probe(s, WRITTEN, 1)) for s in sinks}
        self._await_together("every sink consuming and writing", probes)
        record.waited = round(time.monotonic() - started, 1)
        if self._all_sent():
            record.add_note("the run was all sent and stored before: the sinks had nothing new to write")
        return self._fire(record)

    def _all_sent(self) -> bool:
        """Whether a producer run has sent every image of the run (later runs send them again)."""
        return any(run.get("completed") for run in self.producer_runs)

    def _or_all_sent(self, probe: Callable[[], bool]) -> Callable[[], bool]:
        return lambda: probe() or self._all_sent()

    def _kill_couch_node(self, record: FaultRecord, started: float) -> None:
        """kill -9 the CouchDB node the sinks write to (the first they are given): they must go
        on writing through the others while it is down, and it catches up once it is back."""
        record.victim = "couchdb (node 1)"
        sinks = self._role("sink")
        fired = self._fire_when_sinks_write(record, started)
        self.stack.kill("couchdb")
        probes = {s.name: self._writing_probe(s, fired) for s in sinks}
        self._await_each("every sink writing through the other nodes", probes, record, fired)
        self.stack.start()
        record.note = f"node 1 back after {time.monotonic() - fired:.1f}s"
        record.ok = True

    def _send_malformed(self, messages: list[Malformed], record: FaultRecord, started: float) -> None:
        record.victim = "inference + sink"
        self._await_together(
            "every consumer busy", {m.name: self._busy_probe(m, CONSUMED) for m in self.consumers()}
        )
        record.waited = round(time.monotonic() - started, 1)
        fired = self._fire(record)
        batch = [
            Sent(m, self.pipeline.images_topic if m.topic == "images" else self.pipeline.predictions_topic)
            for m in messages
        ]
        producer = Producer(
            {"bootstrap.servers": self.stack.stack.bootstrap, "enable.idempotence": True, "logger": kafka_log}
        )

        def delivered(sent: Sent) -> Callable[[KafkaError | None, Message], None]:
            def report(err: KafkaError | None, msg: Message) -> None:
                if err is None:
                    sent.partition, sent.offset = int(msg.partition() or 0), int(msg.offset() or 0)
                else:
                    record.add_note(f"not sent: {sent.malformed.name}: {err}")

            return report

        for sent in batch:
            producer.produce(
                sent.topic, value=sent.malformed.value, key=str(uuid.uuid4()), on_delivery=delivered(sent)
            )
        producer.flush(30)
        self.sent.extend(batch)
        record.add_note(f"{len(batch)} sent")

        def dead_lettered_by(service: str) -> Callable[[], bool]:
            return lambda: all(
                service in self._dead_letter_services(s)
                for s in batch
                if s.offset >= 0 and service in DEAD_LETTERED_BY[s.malformed.topic]
            )

        probes = {
            f"dead-lettered by {service}": dead_lettered_by(service) for service in ("inference", "sink")
        }
        self._await_each("every malformed message dead-lettered by each consumer", probes, record, fired)
        after = time.monotonic()
        # Alive and storing after the bad messages: every member consumes, every sink writes.
        probes = {m.name: self._grew_probe(m, CONSUMED, after) for m in self.consumers()}
        probes |= {f"{s.name} writing": self._grew_probe(s, WRITTEN, after) for s in self._role("sink")}
        self._await_each("every consumer consuming, every sink storing after them", probes, record, fired)
        record.ok = all(s.offset >= 0 for s in batch)

    # --- after the plan --------------------------------------------------------------

    def _finish_producer(self) -> None:
        producer = self._producer()
        if not producer.finished:
            self.current_step = "final producer run"
            timeout = self.config.images / max(self.config.producer_rate, 1.0) + 300
            wait_for("the producer to finish its run", lambda: producer.finished, timeout, self.tick)

    def _drain(self) -> None:
        """Until both groups have committed everything up to the high watermarks."""
        self.current_step = "drain"
        groups = {
            f"{self.run_id}-inference": [self.pipeline.images_topic],
            f"{self.run_id}-sink": [self.pipeline.images_topic, self.pipeline.predictions_topic],
        }
        admin_config: dict[str, Any] = {"bootstrap.servers": self.stack.stack.bootstrap, "logger": kafka_log}
        admin = AdminClient(admin_config)
        reader = Consumer(
            {
                "bootstrap.servers": self.stack.stack.bootstrap,
                "group.id": f"chaos-lag-{uuid.uuid4().hex[:8]}",
                "logger": kafka_log,
            }
        )
        try:
            wait_for(
                "the pipeline to drain",
                lambda: self._lag(admin, reader, groups) == 0,
                self.config.drain_timeout,
                self.tick,
            )
        except AssertionError as exc:
            raise ChaosAbortError(str(exc)) from None
        finally:
            reader.close()
        if self.config.couchdb_nodes > 1:
            self._settle()

    def _settle(self) -> None:
        """A CouchDB node that was down syncs its copies when it is back, and the conflicting
        revisions that brings appear in `_changes` only then: the running sinks merge them on
        their next sweep. So, on a cluster, the services stop only once every document of the
        run reads complete (or the drain deadline passes, and the audit says what is not)."""
        self.current_step = "settle"
        last = 0.0

        def complete() -> bool:
            nonlocal last
            if time.monotonic() - last < SETTLE_EVERY:
                return False
            last = time.monotonic()
            return self._audit(run_id=self.run_id).complete == self.config.images

        try:
            wait_for("every document of the run complete", complete, self.config.drain_timeout, self.tick)
        except AssertionError as exc:
            log.warning("%s", exc)

    def _lag(self, admin: AdminClient, reader: Consumer, groups: dict[str, list[str]]) -> int:
        lag = 0
        try:
            for group, topics in groups.items():
                committed = {
                    (tp.topic, tp.partition): tp.offset
                    for tp in admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
                    .result(10)
                    .topic_partitions
                }
                for topic in topics:
                    for partition in range(self.config.partitions):
                        _low, high = reader.get_watermark_offsets(
                            TopicPartition(topic, partition), timeout=10
                        )
                        lag += max(0, high - max(0, committed.get((topic, partition), 0)))
        except Exception as exc:  # a broker still settling: not drained yet
            log.debug("lag unknown: %s", exc)
            return -1
        return lag

    def _stop_services(self) -> None:
        self.current_step = "shutdown"
        running = [m for m in reversed(self.members) if m.running and m.service.proc is not None]
        for member in running:  # all at once, as `docker compose stop` does
            member.expecting_exit = True
            assert member.service.proc is not None
            member.service.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        for member in running:
            assert member.service.proc is not None
            try:
                code: int | None = member.service.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._abort_for_traceback(member)
                code = None
            if member.role == "producer":
                self.producer_runs[-1].update(exit_code=code, ended_at=self._now(), signal="SIGTERM")
            elif code != 0:
                what = "shutdown: SIGTERM ignored for 60s" if code is None else "shutdown (SIGTERM)"
                self.crashes.append(Crash(member.name, code, self._now(), what, member.log_since_start(60)))

    def _audit(self, run_id: str | None = None) -> Report:
        """The audit of what the topics hold, or with `run_id`, of the run's own IDs."""
        stack = self.stack.stack
        plan = {"run_id": run_id, "count": self.config.images} if run_id else {}
        settings = AuditSettings.model_validate(
            {
                **plan,
                "kafka_bootstrap_servers": stack.bootstrap,
                "images_topic": self.pipeline.images_topic,
                "predictions_topic": self.pipeline.predictions_topic,
                "dlq_topic": self.pipeline.dlq_topic,
                "couchdb_url": stack.service_couchdb_url,
                "couchdb_user": stack.couchdb_user,
                "couchdb_password": stack.couchdb_password,
                "couchdb_db": self.pipeline.db,
            }
        )
        return run_audit(settings)

    def _checks(self, report: Report, run_report: Report, aborted: str) -> list[Check]:
        n = self.config.images
        # Re-runs that only kept traffic up while faults remained may be stopped at shutdown.
        completed = [run for run in self.producer_runs if run.get("completed")]
        dead = self._dead_letter_checks()
        checks = [
            Check("every fault fired and the victim served again", not aborted and all(f.ok for f in self.faults),
                  aborted or "; ".join(f"{f.step}: {f.note}" for f in self.faults if not f.ok) or f"{len(self.faults)} faults"),
            Check("no service exited unasked", not self.crashes,
                  ", ".join(f"{c.member} exit {c.exit_code} at {c.at:.0f}s ({c.after_step})" for c in self.crashes) or "none"),
            Check("a producer run delivered all N", bool(completed),
                  f"{len(completed)} of {len(self.producer_runs)} runs completed with exit code 0"),
            Check("produced exactly N distinct IDs", report.produced == n, f"{report.produced:,} of {n:,}"),
            Check("every ID stored once, complete", report.complete == report.produced and report.documents == report.produced,
                  f"{report.complete:,} complete, {report.documents:,} documents for {report.produced:,} IDs"),
            Check("0 lost", report.lost.count == 0, f"{report.lost.count:,} {report.lost.ids[:5]}"),
            Check("0 lost of the run's own IDs (no broker trusted)", run_report.lost.count == 0 and run_report.complete == n,
                  f"{run_report.lost.count:,} lost {run_report.lost.ids[:5]}, {run_report.complete:,} of {n:,} complete"),
            Check("0 extra", report.extra.count == 0, f"{report.extra.count:,} {report.extra.ids[:5]}"),
            Check("0 ground-truth mismatches", report.ground_truth_mismatch.count == 0, f"{report.ground_truth_mismatch.count:,}"),
            Check("0 incomplete", report.missing_prediction.count + report.missing_image.count == 0,
                  f"missing prediction {report.missing_prediction.count:,}, missing image {report.missing_image.count:,}"),
            Check("every malformed message dead-lettered with its reason", bool(dead) and all(d.ok for d in dead),
                  "; ".join(f"{d.name}: {d.dead_lettered_by or 'nowhere'} (accepted {'/'.join(d.accepted)})" for d in dead if not d.ok)
                  or f"{len(dead)} messages"),
            Check("every bad record in the topics dead-lettered (audit)", not report.not_dead_lettered and not report.dead_letter_reason_differs,
                  f"not dead-lettered {len(report.not_dead_lettered)}, other reason {len(report.dead_letter_reason_differs)}"),
        ]  # fmt: skip
        stalls = [f for f in self.faults if f.stall is not None]
        if self.config.kafka_brokers > 1:
            slow = [f"{f.step}: {f.stall:.1f}s" for f in stalls if (f.stall or 0) > STALL_LIMIT]
            checks.append(Check(f"the producer writing again within {STALL_LIMIT:.0f}s of each broker fault", bool(stalls) and not slow,
                                ", ".join(slow) or ", ".join(f"{f.step}: {f.stall:.1f}s" for f in stalls)))  # fmt: skip
        return checks

    def _dead_letter_checks(self) -> list[DeadLetterCheck]:
        checks = []
        for sent in self.sent:
            by = self.dlq.seen.get((sent.topic, sent.partition, sent.offset), {}) if self.dlq else {}
            expected = DEAD_LETTERED_BY[sent.malformed.topic]
            ok = sent.offset >= 0 and all(by.get(service) in sent.malformed.reasons for service in expected)
            checks.append(
                DeadLetterCheck(sent.malformed.name, sent.topic, sent.partition, sent.offset,
                                sorted(sent.malformed.reasons), dict(sorted(by.items())), ok)
            )  # fmt: skip
        return checks

    def _teardown(self) -> None:
        for member in self.members:
            if member.running and member.service.proc is not None:
                member.expecting_exit = True
                member.service.proc.kill()
                member.service.proc.wait(30)
        if self.dlq is not None:
            with contextlib.suppress(Exception):
                self.dlq.close()
        self.stack.stop()
        if not self.config.keep_data:
            brokers = [f"{name}-logs" for name in self.stack.kafka_names]
            for data in (*brokers, "zookeeper", *self.stack.couchdb_names):
                shutil.rmtree(self.stack.run_dir / data, ignore_errors=True)

    # --- watching --------------------------------------------------------------------

    def tick(self) -> None:
        """Called on every round of every wait: restart what died unasked, read the metrics."""
        for member in self.members:
            if member.service.proc is None or member.running or member.expecting_exit or member.finished:
                continue
            self._exited(member, member.service.proc.returncode)
        if time.monotonic() - self.last_scrape >= SCRAPE_EVERY:
            self.last_scrape = time.monotonic()
            for member in self.members:
                if member.running:
                    member.scrape()
            if self.dlq is not None:
                self.dlq.poll()

    def _exited(self, member: Member, code: int | None) -> None:
        if member.role == "producer" and code == 0:
            self.producer_runs[-1].update(exit_code=0, ended_at=self._now(), completed=True)
            if self.remaining and not self.producer_runs[-1]["last"]:
                # The plan outlasted the run: send it again (same run id, same IDs) to keep traffic up.
                # Not after the full-speed run that follows the last fault: no fault needs traffic then.
                self._start_producer(member)
            else:
                member.finished = True
            return
        if member.role == "producer":
            self.producer_runs[-1].update(exit_code=code, ended_at=self._now())
        member.crashes += 1
        crash = Crash(member.name, code, self._now(), self.current_step, member.log_since_start())
        self.crashes.append(crash)
        log.error("%s exited with %s during %s:\n%s", member.name, code, self.current_step, crash.log_tail)
        if member.crashes > self.config.crash_limit:
            member.expecting_exit = True
            raise ChaosAbortError(
                f"{member.name} exited {member.crashes} times unasked; last log:\n{crash.log_tail}"
            )
        if member.role == "producer":
            self._start_producer(member)
        else:
            member.start()

    def _abort_for_traceback(self, member: Member) -> None:
        """A hung service: SIGABRT makes faulthandler (PYTHONFAULTHANDLER) write every thread's
        stack into its log, as evidence of where it hangs; then SIGKILL."""
        proc = member.service.proc
        assert proc is not None
        proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)

    def _terminate(self, member: Member) -> int | None:
        """SIGTERM and wait up to 60 s; None when it had to be killed."""
        proc = member.service.proc
        assert proc is not None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            self._abort_for_traceback(member)
            return None
        if member.role == "producer":
            self.producer_runs[-1].update(exit_code=code, ended_at=self._now(), signal="SIGTERM")
        return code

    def _await_each(
        self, what: str, probes: dict[str, Callable[[], bool]], record: FaultRecord, fired: float
    ) -> None:
        """Wait until every probe has held once; note when each did, and the slowest."""
        pending = dict(probes)

        def all_held() -> bool:
            for name, probe in list(pending.items()):
                if probe():
                    record.parts[name] = round(time.monotonic() - fired, 1)
                    del pending[name]
            return not pending

        try:
            wait_for(what, all_held, self.config.step_timeout, self.tick)
        except AssertionError:
            still = ", ".join(self._describe(name) for name in pending)
            raise AssertionError(f"timed out waiting for {what}: still not {still}") from None
        slowest = max(probes, key=lambda name: record.parts[name])
        record.serving_after = record.parts[slowest]
        record.add_note(f"slowest: {slowest} after {record.parts[slowest]:.1f}s")

    def _await_together(self, what: str, probes: dict[str, Callable[[], bool]]) -> None:
        """Wait until all probes hold at the same moment; on a timeout, name those that did not."""
        failing: list[str] = []

        def all_hold() -> bool:
            failing[:] = [name for name, probe in probes.items() if not probe()]
            return not failing

        try:
            wait_for(what, all_hold, self.config.step_timeout, self.tick)
        except AssertionError:
            raise AssertionError(
                f"timed out after {self.config.step_timeout:.0f}s waiting for {what}: "
                f"not {', '.join(self._describe(name) for name in failing)}"
            ) from None

    def _describe(self, name: str) -> str:
        member = next((m for m in self.members if name.split(" ")[0] == m.name), None)
        if member is None:
            return name
        state = "running" if member.running else "not running"
        if member.role == "producer":
            return f"{name} ({state}, delivered {member.value(DELIVERED):.0f} since its start)"
        counts = f"consumed {member.value(CONSUMED):.0f}" + (
            f", wrote {member.value(WRITTEN):.0f}" if member.role == "sink" else ""
        )
        return f"{name} ({state}, {counts} since its start)"

    def _busy_probe(self, member: Member, metric: str, minimum: int | None = None) -> Callable[[], bool]:
        least = self.config.min_consumed if minimum is None else minimum
        return lambda: member.busy(metric, least)

    @staticmethod
    def _grew_probe(member: Member, metric: str, since: float) -> Callable[[], bool]:
        return lambda: member.grew(metric, since)

    def _writing_probe(self, sink: Member, since: float) -> Callable[[], bool]:
        """The sink wrote since then; or, once the run was all sent (nothing new to write), it
        consumed since then."""
        return lambda: sink.grew(WRITTEN, since) or (self._all_sent() and sink.grew(CONSUMED, since))

    def _fire(self, record: FaultRecord) -> float:
        fired = time.monotonic()
        record.fired_at = round(fired - self.t0, 1)
        log.info("firing %s on %s at %.1fs", record.step, record.victim, record.fired_at)
        return fired

    def _dead_letter_services(self, sent: Sent) -> set[str]:
        assert self.dlq is not None
        return set(self.dlq.seen.get((sent.topic, sent.partition, sent.offset), {}))

    def _assigned(self, member: Member) -> bool:
        return member.value(ASSIGNED) > 0

    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.role != "producer"]

    def _role(self, role: Role) -> list[Member]:
        return [m for m in self.members if m.role == role]

    def _producer(self) -> Member:
        return self._role("producer")[0]

    def _now(self) -> float:
        return round(time.monotonic() - self.t0, 1)


@contextlib.contextmanager
def logging_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = log.level
    log.setLevel(logging.INFO)
    for logger in (log, kafka_log):
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in (log, kafka_log):
            logger.removeHandler(handler)
        log.setLevel(level)
        handler.close()


def write_result(result: ChaosResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
