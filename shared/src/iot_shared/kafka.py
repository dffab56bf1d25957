"""Kafka basics shared by every client: the config every client starts from, record positions
and keys, and topic creation. `publisher`, `consumer` and `batch_loop` build on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from iot_shared.errors import PipelineError
from iot_shared.lifecycle import StopFlag, wait_until
from iot_shared.logs import LIBRDKAFKA
from iot_shared.settings import ServiceSettings


def base_config(settings: ServiceSettings, client_id: str) -> dict[str, Any]:
    """The librdkafka settings every client of the pipeline starts from.

    Its log lines go to the LIBRDKAFKA logger instead of raw to stderr. They queue until the
    client's poll() (a consumer's consume()) serves them: an admin client must be polled too.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": client_id,
        "security.protocol": settings.kafka_security_protocol,
        "logger": LIBRDKAFKA,
    }
    if settings.kafka_security_protocol == "SASL_SSL":
        config |= {
            "sasl.mechanism": settings.kafka_sasl_mechanism,
            "sasl.username": settings.kafka_username,
            "sasl.password": settings.kafka_password.get_secret_value(),
        }
        if settings.kafka_ca_file is not None:
            config["ssl.ca.location"] = str(settings.kafka_ca_file)
    return config | settings.kafka_extra()


def position(msg: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed record (never None for a record)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("not a consumed record")
    return topic, partition, offset


def as_text(value: str | bytes | None) -> str:
    """A record's key or header value for logs and reports: bytes read as UTF-8 (what is not
    shows as U+FFFD), None as ""."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


class MissingTopicsError(PipelineError):
    """The broker answers, but topics the service needs do not exist (yet)."""


def wait_for_topics(settings: ServiceSettings, topics: Sequence[str], stop: StopFlag, timeout: float) -> None:
    """Wait (bounded) until a broker answers and lists every topic in `topics`.

    Raises TimeoutError with one clear line naming the setting to check, so a service with a
    wrong or unreachable broker exits (and is restarted) instead of hanging silently;
    StoppedWhileWaitingError when stop is set meanwhile.
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
        finally:
            admin.poll(0)  # librdkafka's log lines of the attempt
        missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error is not None]
        if missing:
            raise MissingTopicsError(f"topics {', '.join(missing)} do not exist (iot-topics creates them)")

    wait_until("Kafka", check, stop, timeout, (ConnectionError, MissingTopicsError))


class UnderReplicatedTopicsError(PipelineError):
    """Topics exist with fewer replicas than the cluster should keep of them."""


def min_insync_replicas(replicas: int) -> int:
    """With 3 copies an acknowledged write is on at least 2 of them: one broker may die without
    losing it or stopping writes. With fewer, every copy there is."""
    return 2 if replicas >= 3 else 1


def ensure_topics(
    settings: ServiceSettings,
    partitions: dict[str, int],
    replication_factor: int | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet, each with `replication_factor` replicas (unset:
    3, or one per broker when the cluster has fewer); returns those created. Safe to run again.

    Raises UnderReplicatedTopicsError naming the topics that already exist with fewer replicas:
    they are never altered (a reassignment is an operator's decision), but never left unsaid.
    """
    admin = AdminClient(base_config(settings, "iot-topics"))
    try:
        return _create_topics(admin, partitions, replication_factor, timeout)
    finally:
        admin.poll(0)  # librdkafka's log lines


def _create_topics(
    admin: AdminClient, partitions: dict[str, int], replication_factor: int | None, timeout: float
) -> list[str]:
    deadline = time.monotonic() + timeout
    metadata = admin.list_topics(timeout=timeout)
    replicas = replication_factor or min(3, len(metadata.brokers))
    existing = {name: metadata.topics[name] for name in partitions if name in metadata.topics}
    fewest = {
        name: min(len(p.replicas) for p in t.partitions.values())
        for name, t in existing.items()
        if t.partitions
    }
    short = {name: n for name, n in fewest.items() if n < replicas}
    new = [
        NewTopic(name, n, replicas, config={"min.insync.replicas": str(min_insync_replicas(replicas))})
        for name, n in partitions.items()
        if name not in existing
    ]
    futures = admin.create_topics(new, request_timeout=timeout) if new else {}
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout=max(1.0, deadline - time.monotonic()))
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    if short:
        listed = ", ".join(f"{name} ({n} of {replicas})" for name, n in sorted(short.items()))
        raise UnderReplicatedTopicsError(
            f"topics with fewer replicas than {replicas}: {listed}; add replicas with "
            "kafka-reassign-partitions, or set IOT_REPLICATION_FACTOR to what they have"
        )
    return created
