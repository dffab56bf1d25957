"""The one Kafka producer of each service: idempotent (acks=all), failures counted between flushes."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from iot_shared.kafka import base_config
from iot_shared.metrics import DELIVERED, DELIVERY_FAILURES
from iot_shared.settings import ServiceSettings

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]


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
