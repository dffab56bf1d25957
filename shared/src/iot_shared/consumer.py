"""Consumers that never commit on their own: a service commits a batch's offsets only after
everything it produced for that batch is acknowledged (or written to CouchDB). At-least-once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from iot_shared.kafka import base_config, position
from iot_shared.metrics import CONSUMED, REBALANCES, record_consumer_stats
from iot_shared.settings import ServiceSettings

log = logging.getLogger(__name__)


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


def _describe(partitions: list[TopicPartition]) -> str:
    return (
        ", ".join(
            f"{tp.topic}[{tp.partition}]" + (f"@{tp.offset}" if tp.offset != OFFSET_INVALID else "")
            for tp in partitions
        )
        or "nothing"
    )
