"""The dead-letter topic: where a message that breaks the contract goes, with why and whence."""

from __future__ import annotations

import logging

from confluent_kafka import Message

from iot_shared.errors import DLQ_REASONS, InvalidMessageError
from iot_shared.kafka import as_text
from iot_shared.metrics import DEAD_LETTERS
from iot_shared.publisher import Headers, Publisher

log = logging.getLogger(__name__)

# librdkafka's default `message.max.bytes` (1,000,000) less room for the record's own framing: a
# record just under the limit on the source topic would not fit again with the dlq.* headers.
MAX_RECORD_BYTES = 1_000_000 - 4_096
MAX_KEY_BYTES = 1_024


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
        key = (msg.key() or b"")[:MAX_KEY_BYTES]
        value = msg.value() or b""
        room = MAX_RECORD_BYTES - len(key) - sum(len(name) + len(v or b"") for name, v in headers)
        if len(value) > room:
            # The copy must fit where the original did not need headers: keep its head, say so.
            headers.append(("dlq.truncated.from", str(len(value)).encode()))
            value = value[: max(0, room - 64)]
        self._publisher.send(
            self._topic,
            value=value,
            key=as_text(key) or None,
            headers=headers,
        )
