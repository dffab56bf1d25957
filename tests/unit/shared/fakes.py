"""In-memory stand-ins for a librdkafka consumer and the publisher, for testing the loop's logic.

The real clients are exercised against the real broker in tests/integration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from confluent_kafka import OFFSET_INVALID, KafkaError, Message, TopicPartition

Partition = tuple[str, int]


class FakeConsumer:
    """Partitions of records with a fetch position each; pause, seek and commit as librdkafka does."""

    def __init__(
        self, records: dict[Partition, list[bytes | None]], timestamps: list[tuple[int, int]] | None = None
    ) -> None:
        """`timestamps` (kind, ms) are given to each partition's records in turn."""
        self.logs = {
            tp: [
                Message(topic=tp[0], partition=tp[1], offset=i, value=v, timestamp=ts)
                for i, (v, ts) in enumerate(zip(values, timestamps or [(0, 0)] * len(values), strict=True))
            ]
            for tp, values in records.items()
        }
        self.fetch = dict.fromkeys(self.logs, 0)  # where the next fetch starts
        self.app_pos: dict[Partition, int] = {}  # one past the last record handed out
        self.paused: set[Partition] = set()
        self.committed: dict[Partition, int] = {}
        self.commit_errors: dict[Partition, KafkaError] = {}
        self.polls = 0

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        self.polls += 1
        batch: list[Message] = []
        for tp, log in self.logs.items():
            if tp in self.paused:
                continue
            take = log[self.fetch[tp] : self.fetch[tp] + num_messages - len(batch)]
            self.fetch[tp] += len(take)
            if take:
                self.app_pos[tp] = take[-1].offset() + 1
            batch.extend(take)
        return batch

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[SimpleNamespace]:
        assert not asynchronous
        results = []
        for tp in offsets:
            error = self.commit_errors.get((tp.topic, tp.partition))
            if error is None:
                self.committed[tp.topic, tp.partition] = tp.offset
            # librdkafka's per-partition result; TopicPartition.error cannot be set from Python.
            results.append(
                SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=tp.offset, error=error)
            )
        return results

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.logs]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.app_pos.get((tp.topic, tp.partition), OFFSET_INVALID))
            for tp in partitions
        ]

    def pause(self, partitions: list[TopicPartition]) -> None:
        # librdkafka drops what it had fetched ahead and resumes from the application's position
        # (or, before the first record, from the committed offset).
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.paused.add(key)
            self.fetch[key] = self.app_pos.get(key, self.committed.get(key, 0))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update((tp.topic, tp.partition) for tp in partitions)

    def seek(self, tp: TopicPartition) -> None:
        self.fetch[tp.topic, tp.partition] = tp.offset
        self.app_pos[tp.topic, tp.partition] = tp.offset

    def close(self) -> None:
        pass


@dataclass
class RecordingPublisher:
    sent: list[tuple[str, bytes, str | None, dict[str, bytes]]] = field(default_factory=list)
    failures_to_report: list[list[object]] = field(default_factory=list)
    polls: int = 0

    def send(self, topic: str, value: bytes, key: str | None = None, headers: list | None = None) -> None:
        self.sent.append((topic, value, key, dict(headers or [])))

    def flush(self, timeout: float) -> list[object]:
        return self.failures_to_report.pop(0) if self.failures_to_report else []

    def poll(self) -> None:
        self.polls += 1

    def readiness(self, timeout: float = 2.0) -> tuple[bool, str]:
        return True, "kafka reachable"

    def dead_letters(self) -> list[tuple[str, bytes, dict[str, bytes]]]:
        return [(h["dlq.reason"].decode(), value, h) for _, value, _, h in self.sent if "dlq.reason" in h]
