"""In-memory stand-ins for a librdkafka consumer and the publisher, for testing the loop's logic.

The real clients are exercised against the real broker in tests/integration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, Message, TopicPartition

Partition = tuple[str, int]


class FakeConsumer:
    """Partitions of records with a fetch position each; pause, seek, store and commit as
    librdkafka does with `enable.auto.offset.store=false` (its auto-commit timer aside)."""

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
        self.stored: dict[Partition, int] = {}  # what the next commit commits
        self.committed: dict[Partition, int] = {}
        self.polls: list[tuple[int, float]] = []  # each consume's (num_messages, timeout)
        self.per_poll: int | None = None  # at most this many records a poll: they arrive one by one

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        self.polls.append((num_messages, timeout))
        num_messages = min(num_messages, self.per_poll or num_messages)
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

    def store_offsets(
        self, message: Message | None = None, offsets: list[TopicPartition] | None = None
    ) -> None:
        for tp in offsets or []:
            if (tp.topic, tp.partition) not in self.logs:
                raise KafkaException(KafkaError(KafkaError._STATE, "partition not assigned"))
            self.stored[tp.topic, tp.partition] = tp.offset

    def commit(self, *, asynchronous: Literal[False]) -> list[TopicPartition]:
        self.committed.update(self.stored)
        return [TopicPartition(t, p, off) for (t, p), off in self.stored.items()]

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
        self.committed.update(self.stored)  # auto-commit's final commit


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
