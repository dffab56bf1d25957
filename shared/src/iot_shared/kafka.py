"""Kafka basics shared by every client: the config every client starts from, record positions,
and topic creation. `publisher`, `consumer` and `batch_loop` build on it.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from iot_shared.settings import ServiceSettings


def base_config(settings: ServiceSettings, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": client_id,
        **settings.kafka_extra_config,
    }


def position(msg: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed record (never None for a record)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("not a consumed record")
    return topic, partition, offset


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
