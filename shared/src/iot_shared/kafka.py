"""Kafka basics shared by every client: the config every client starts from, record positions,
and topic creation. `publisher`, `consumer` and `batch_loop` build on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from iot_shared.errors import PipelineError
from iot_shared.lifecycle import StopFlag, wait_until
from iot_shared.settings import ServiceSettings


def base_config(settings: ServiceSettings, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": client_id,
        **settings.kafka_extra(),
    }


def position(msg: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed record (never None for a record)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("not a consumed record")
    return topic, partition, offset


class MissingTopicsError(PipelineError):
    """The broker answers, but topics the service needs do not exist (yet)."""


def wait_for_topics(settings: ServiceSettings, topics: Sequence[str], stop: StopFlag, timeout: float) -> None:
    """Wait (bounded) until a broker answers and lists every topic in `topics`.

    Raises TimeoutError with one clear line naming the setting to check, so a service with a
    wrong or unreachable broker exits (and is restarted) instead of hanging silently.
    """
    admin = AdminClient(base_config(settings, "iot-startup"))

    def check() -> None:
        try:
            metadata = admin.list_topics(timeout=min(10.0, timeout))
        except KafkaException as exc:
            raise ConnectionError(
                f"no broker answers at IOT_KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers} "
                f"({exc.args[0].str() if exc.args else exc})"
            ) from None
        missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error is not None]
        if missing:
            raise MissingTopicsError(f"topics {', '.join(missing)} do not exist (iot-topics creates them)")

    wait_until("Kafka", check, stop, timeout, (ConnectionError, MissingTopicsError))


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
