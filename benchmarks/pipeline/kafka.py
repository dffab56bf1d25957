"""What the benchmark reads from the broker: topic sizes, consumer-group state, predictions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupState, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from iot_shared.wire_fields import ID, INFERRED_AT


def _reader(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",  # never joined: assign() only
            "enable.auto.commit": False,
        }
    )


def _partitions(consumer: Consumer, topic: str) -> list[TopicPartition]:
    metadata = consumer.list_topics(topic, timeout=10)
    return [TopicPartition(topic, p) for p in sorted(metadata.topics[topic].partitions)]


class Broker:
    """Topic sizes and consumer groups, asked of the broker without joining anything."""

    def __init__(self, bootstrap: str) -> None:
        self._admin: AdminClient | None = AdminClient({"bootstrap.servers": bootstrap})
        self._consumer = _reader(bootstrap)

    def size(self, topic: str) -> int:
        """Records in `topic`: the sum of its partitions' high watermarks."""
        partitions = _partitions(self._consumer, topic)
        return sum(self._consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions)

    def group_ready(self, group: str, topics: Sequence[str]) -> bool:
        """The group is stable and its members hold every partition of `topics`."""
        if self._admin is None:
            raise RuntimeError("Broker is closed")
        try:
            description = self._admin.describe_consumer_groups([group])[group].result(timeout=10)
        except KafkaException:
            return False  # not known yet
        if description.state != ConsumerGroupState.STABLE:
            return False
        held = sum(
            1
            for member in description.members
            for tp in member.assignment.topic_partitions
            if tp.topic in topics
        )
        return held == sum(len(_partitions(self._consumer, topic)) for topic in topics)

    def close(self) -> None:
        """Before the broker goes away, or librdkafka logs its reconnection attempts."""
        self._consumer.close()
        self._admin = None  # AdminClient has no close(); dropping the last reference ends it


class PredictionReader:
    """Reads a predictions topic from its start: each image's InferredAt, first prediction wins."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = _reader(bootstrap)
        partitions = _partitions(self._consumer, topic)
        self._consumer.assign([TopicPartition(topic, tp.partition, OFFSET_BEGINNING) for tp in partitions])
        self.inferred_at: dict[str, float] = {}

    def read(self) -> int:
        """Take in what has arrived; returns how many images have a prediction."""
        for msg in self._consumer.consume(5_000, 0.1):
            value = msg.value()
            if msg.error() is None and value:
                prediction = json.loads(value)
                self.inferred_at.setdefault(prediction[ID], float(prediction[INFERRED_AT]))
        return len(self.inferred_at)

    def close(self) -> None:
        self._consumer.close()
