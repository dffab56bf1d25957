"""Kafka helpers: client configs, an idempotent publisher, consumers that commit only what was
processed, the dead-letter topic, and topic creation.

Delivery guarantee: at-least-once. Consumers never auto-commit; a service commits a batch's
offsets only after everything it produced for that batch is acknowledged (or written to CouchDB).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from iot_shared.errors import DLQ_REASONS, InvalidMessageError
from iot_shared.metrics import (
    CONSUMED,
    DEAD_LETTERS,
    DELIVERED,
    DELIVERY_FAILURES,
    REBALANCES,
    record_consumer_stats,
)
from iot_shared.settings import ServiceSettings

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]


def base_config(settings: ServiceSettings, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": client_id,
        **settings.kafka_extra_config,
    }


class Publisher:
    """An idempotent producer (acks=all) that counts failed deliveries between flushes."""

    def __init__(self, settings: ServiceSettings, service: str) -> None:
        config = {
            **base_config(settings, service),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
        self._producer = Producer(config)
        self._service = service
        self._failures: list[KafkaError] = []
        self._topics: set[str] = set()

    def send(self, topic: str, value: bytes, key: str | None = None, headers: Headers | None = None) -> None:
        if topic not in self._topics:
            # Export both counters at 0 from the start, so rates and alerts see the series.
            self._topics.add(topic)
            DELIVERED.labels(self._service, topic)
            DELIVERY_FAILURES.labels(self._service, topic)
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                # Local queue full: serve delivery reports to make room, then try again.
                self._producer.poll(0.1)
        self._producer.poll(0)

    def readiness(self, timeout: float = 2.0) -> tuple[bool, str]:
        """For /readyz: does a broker answer a metadata request?"""
        try:
            self._producer.list_topics(timeout=timeout)
        except KafkaException as exc:
            return False, f"kafka unreachable: {exc}"
        return True, "kafka reachable"

    def flush(self, timeout: float) -> list[KafkaError]:
        """Wait for every outstanding message; return the failures since the last flush.

        A message still queued when the timeout passes counts as a failure (`_TIMED_OUT`).
        """
        remaining = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        if remaining:
            log.error("%d messages not delivered within %.0fs", remaining, timeout)
        failures.extend(KafkaError(KafkaError._TIMED_OUT) for _ in range(remaining))
        return failures

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            DELIVERED.labels(self._service, msg.topic()).inc()
        else:
            log.error("delivery to %s failed: %s", msg.topic(), err)
            DELIVERY_FAILURES.labels(self._service, msg.topic()).inc()
            self._failures.append(err)


def make_consumer(
    settings: ServiceSettings,
    service: str,
    group_id: str,
    topics: Sequence[str],
) -> Consumer:
    """A group member that never commits on its own; see `commit_processed`."""

    def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        REBALANCES.labels(service, "assign").inc()
        log.info("assigned %s", _describe(partitions))

    def on_revoke(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        REBALANCES.labels(service, "revoke").inc()
        log.info("revoked %s", _describe(partitions))

    config = {
        **base_config(settings, f"{service}-{group_id}"),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "statistics.interval.ms": 5000,
        "stats_cb": lambda stats: record_consumer_stats(service, stats),
    }
    for event in ("assign", "revoke"):
        REBALANCES.labels(service, event)
    consumer = Consumer(config)
    consumer.subscribe(list(topics), on_assign=on_assign, on_revoke=on_revoke)
    return consumer


def usable(service: str, messages: Iterable[Message]) -> list[Message]:
    """Drop consumer events that are not records (errors are logged, not fatal)."""
    records = []
    for msg in messages:
        err = msg.error()
        if err is None:
            records.append(msg)
            CONSUMED.labels(service, msg.topic()).inc()
        elif err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error: %s", err)
    return records


def position(msg: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed record (never None for a record)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("not a consumed record")
    return topic, partition, offset


def next_offsets(messages: Iterable[Message]) -> list[TopicPartition]:
    """The offsets to commit after `messages`: one past the last of each partition."""
    highest: dict[tuple[str, int], int] = {}
    for msg in messages:
        topic, partition, offset = position(msg)
        highest[topic, partition] = max(highest.get((topic, partition), -1), offset)
    return [TopicPartition(t, p, off + 1) for (t, p), off in highest.items()]


def commit_processed(consumer: Consumer, messages: Sequence[Message]) -> bool:
    """Commit a processed batch. A failure (rebalance) is logged: the batch will be redelivered,
    which is safe because every consumer in this pipeline is idempotent."""
    if not messages:
        return True
    try:
        consumer.commit(offsets=next_offsets(messages), asynchronous=False)
    except KafkaException as exc:
        log.warning("commit failed, the batch will be redelivered: %s", exc)
        return False
    return True


def rewind(consumer: Consumer, messages: Sequence[Message]) -> None:
    """Seek back to the first message of each partition so a failed batch is consumed again."""
    first: dict[tuple[str, int], int] = {}
    for msg in messages:
        topic, partition, offset = position(msg)
        first[topic, partition] = min(first.get((topic, partition), offset), offset)
    for (topic, partition), offset in first.items():
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            # Partition no longer ours: its new owner starts from the last commit anyway.
            log.warning("cannot rewind %s[%d]: %s", topic, partition, exc)


class DeadLetters:
    """Sends a message that breaks the contract to the dead-letter topic, with why and whence."""

    def __init__(self, publisher: Publisher, topic: str, service: str) -> None:
        self._publisher = publisher
        self._topic = topic
        self._service = service
        for reason in DLQ_REASONS:
            DEAD_LETTERS.labels(service, reason)  # exported at 0 until the first bad message

    def send(self, msg: Message, error: InvalidMessageError) -> None:
        DEAD_LETTERS.labels(self._service, error.reason).inc()
        log.warning("dead-lettering %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), error)
        headers: Headers = [
            ("dlq.reason", error.reason.encode()),
            ("dlq.detail", error.detail[:1000].encode()),
            ("dlq.source.topic", str(msg.topic()).encode()),
            ("dlq.source.partition", str(msg.partition()).encode()),
            ("dlq.source.offset", str(msg.offset()).encode()),
            ("dlq.service", self._service.encode()),
        ]
        key = msg.key()
        self._publisher.send(
            self._topic,
            value=msg.value() or b"",
            key=key.decode("utf-8", "replace") if key else None,
            headers=headers,
        )


def ensure_topics(
    settings: ServiceSettings,
    partitions: dict[str, int],
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; returns those created. Safe to run again."""
    admin = AdminClient(base_config(settings, "iot-topics"))
    deadline = time.monotonic() + timeout
    new = [NewTopic(name, n, replication_factor) for name, n in partitions.items()]
    created = []
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout=max(1.0, deadline - time.monotonic()))
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def _describe(partitions: list[TopicPartition]) -> str:
    return (
        ", ".join(
            f"{tp.topic}[{tp.partition}]" + (f"@{tp.offset}" if tp.offset != OFFSET_INVALID else "")
            for tp in partitions
        )
        or "nothing"
    )
