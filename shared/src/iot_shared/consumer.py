"""A consumer group member whose offsets move only as batches finish: a batch's offsets are
stored only after everything it produced is acknowledged (or written to CouchDB), and only
stored offsets are committed.

This is librdkafka's at-least-once pattern: `enable.auto.offset.store=false`, `store_offsets()`
after each finished batch, auto-commit of what is stored every `IOT_COMMIT_INTERVAL_MS`. librdkafka
also commits a partition's stored offset when the partition is revoked (the rebalance waits for
that commit, so its next owner starts where this member finished) and when the consumer closes.

Membership is built for fast, quiet failover: incremental (cooperative-sticky) rebalancing, so
a joining or leaving member does not stop the others, and optional static membership
(`group.instance.id`), so a restarted member gets its partitions back without any rebalance.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Protocol

from confluent_kafka import (
    OFFSET_INVALID,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from iot_shared.errors import PipelineError
from iot_shared.kafka import base_config, position
from iot_shared.metrics import (
    CONSUMED,
    CONSUMER_LAG,
    CONSUMER_LAG_AGE,
    CONSUMER_PAUSED,
    REBALANCES,
    record_consumer_stats,
)
from iot_shared.settings import ConsumerSettings

log = logging.getLogger(__name__)

# Fenced this often within the window, the member gives up: another process has its instance ID.
MAX_REJOINS = 3
REJOIN_WINDOW_SECONDS = 300.0

Partition = tuple[str, int]


class FatalConsumerError(PipelineError):
    """librdkafka says this consumer cannot go on (e.g. fenced by a member with the same instance ID)."""


class KafkaConsumer(Protocol):
    """What a member uses of `confluent_kafka.Consumer` (tests give it an in-memory one)."""

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]: ...
    def store_offsets(
        self, message: Message | None = None, offsets: list[TopicPartition] | None = None
    ) -> None: ...
    def commit(self, *, asynchronous: Literal[False]) -> list[TopicPartition]: ...
    def assignment(self) -> list[TopicPartition]: ...
    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def seek(self, partition: TopicPartition) -> None: ...
    def close(self) -> None: ...


class GroupMember:
    """One member of a consumer group, with its assignment tracked for metrics and pausing.

    A fatal consumer error ends this librdkafka consumer for good. Seen after a broker restart:
    the broker fences a static member as if another process had its instance ID. The member
    then rejoins as a new consumer (what it finished since the last commit comes again, so
    nothing is lost); fenced again and again, another live process really has its ID, and it
    gives up.
    """

    def __init__(
        self,
        consumer: KafkaConsumer | None,
        service: str,
        connect: Callable[[GroupMember], KafkaConsumer] | None = None,
        commit_each_batch: bool = False,
    ) -> None:
        """`connect` makes a new subscribed consumer for this member (at once when `consumer`
        is None, and to rejoin after a fatal error). `commit_each_batch`: commit as each batch
        finishes, not only on librdkafka's auto-commit interval (`IOT_COMMIT_INTERVAL_MS=0`)."""
        self.service = service
        self.commit_each_batch = commit_each_batch
        self.assigned: set[Partition] = set()
        self.paused = False
        self._resume_at = math.inf  # while paused: when hold_back's time is up
        self.fatal: KafkaError | None = None
        self._connect = connect
        self._rejoins: deque[float] = deque()
        self._read_topics: set[str] = set()  # whose lag age this member reports
        for event in ("assign", "revoke", "lost"):
            REBALANCES.labels(service, event)
        CONSUMER_PAUSED.labels(service).set(0)
        if consumer is None:
            if connect is None:
                raise ValueError("a consumer or a way to connect one is needed")
            consumer = connect(self)
        self.consumer = consumer

    # --- group events (served from inside consume) ------------------------------------

    def on_assign(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        # Incremental: `partitions` are the ones added; librdkafka assigns them after we return.
        REBALANCES.labels(self.service, "assign").inc()
        self.assigned.update((tp.topic, tp.partition) for tp in partitions)
        log.info("assigned %s", describe(partitions))

    def on_revoke(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        # What we finished is committed by librdkafka as it lets them go, before their next
        # owner gets them: it is not redone.
        REBALANCES.labels(self.service, "revoke").inc()
        self._forget(partitions)
        log.info("revoked %s", describe(partitions))

    def on_lost(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        # The group moved on without us (we were silent too long); their new owner restarts
        # from the last commit: librdkafka commits nothing more for a lost assignment.
        REBALANCES.labels(self.service, "lost").inc()
        self._forget(partitions)
        log.warning("lost %s", describe(partitions))

    def on_error(self, err: KafkaError) -> None:
        if _is_fatal(err):
            self.fatal = err  # dealt with by the next poll: rejoin, or give up
            log.error("fatal Kafka consumer error: %s", err.str())
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            log.error("no Kafka broker answers (IOT_KAFKA_BOOTSTRAP_SERVERS); still trying: %s", err.str())
        else:
            log.warning("Kafka consumer error: %s", err)

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's report of each commit: a failed one is tried again at the next interval
        (what is stored stays ahead of what is committed), or on revoke or close."""
        if err is not None:
            log.warning("commit failed, tried again later: %s", err)
        for tp in (tp for tp in partitions if tp.error is not None):
            log.warning("commit of %s[%d] failed, tried again later: %s", tp.topic, tp.partition, tp.error)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.assigned.discard((tp.topic, tp.partition))
            # This member no longer reports lag for it; its new owner does.
            with contextlib.suppress(KeyError):  # no series yet
                CONSUMER_LAG.remove(self.service, tp.topic, str(tp.partition))

    # --- the loop's operations ----------------------------------------------------------

    def raise_if_fatal(self) -> None:
        self._rejoin_if_fatal()
        if self.fatal is not None:
            raise FatalConsumerError(
                f"Kafka consumer cannot go on ({self.fatal.str()}, {len(self._rejoins)} rejoins in the last "
                f"{REJOIN_WINDOW_SECONDS:.0f}s); does another instance use this IOT_GROUP_INSTANCE_ID?"
            )

    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        """The records of one poll; errors that are not records are logged, not returned.

        `timeout` is clamped at 0: librdkafka takes any negative one, however small, as "wait
        forever", and a paused member would then never return from the poll.
        """
        self.raise_if_fatal()
        records = []
        ages: dict[str, float] = {}
        now = time.time()
        for msg in self.consumer.consume(max_messages, max(0.0, timeout)):
            err = msg.error()
            if err is None:
                records.append(msg)
                topic = str(msg.topic())
                CONSUMED.labels(self.service, topic).inc()
                ages[topic] = max(ages.get(topic, 0.0), _age(msg, now))
            elif _is_fatal(err):  # arrives as an event as well as through error_cb
                self.on_error(err)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err)
        if self.fatal is not None:
            # Nothing of this poll is handled: uncommitted, it comes again after the rejoin.
            self.raise_if_fatal()
            return []
        self._report_lag_age(ages, waited=timeout > 0)
        return records

    def _report_lag_age(self, ages: dict[str, float], waited: bool) -> None:
        """The oldest record just read is the oldest unread one: its age is how far behind this
        member is. A poll that waited and got nothing means nothing is unread (a poll that did not
        wait can come back empty while records are still on their way)."""
        for topic, age in ages.items():
            CONSUMER_LAG_AGE.labels(self.service, topic).set(age)
        self._read_topics.update(ages)
        if waited and not ages:
            for topic in self._read_topics:
                CONSUMER_LAG_AGE.labels(self.service, topic).set(0)

    def _rejoin_if_fatal(self) -> None:
        if self.fatal is None or self._connect is None:
            return
        now = time.monotonic()
        while self._rejoins and now - self._rejoins[0] > REJOIN_WINDOW_SECONDS:
            self._rejoins.popleft()
        if len(self._rejoins) >= MAX_REJOINS:
            return
        self._rejoins.append(now)
        log.warning("rejoining the group as a new consumer after: %s", self.fatal.str())
        with contextlib.suppress(KafkaException, RuntimeError):
            self.consumer.close()
        self._forget([TopicPartition(t, p) for t, p in self.assigned])
        self._set_paused(False)  # the new consumer starts unpaused
        self.fatal = None
        self.consumer = self._connect(self)

    def finished(self, records: Sequence[Message]) -> None:
        """Store the offsets after a finished batch: they are committed on librdkafka's interval,
        on revoke and on close.

        Fewer commits cost the broker less (each is a request and a write). What is finished
        but not yet committed when the process dies is consumed again, like a failed commit:
        every step of this pipeline is idempotent.
        """
        try:
            self.consumer.store_offsets(offsets=next_offsets(records))
        except KafkaException as exc:
            # Revoked while the batch was handled: the next owner consumes it again.
            log.info("offsets not stored, partitions no longer ours: %s", exc)
            return
        if self.commit_each_batch:
            with contextlib.suppress(KafkaException):  # on_commit reports it; the next batch tries again
                self.consumer.commit(asynchronous=False)

    def hold_back(self, records: Sequence[Message], seconds: float) -> None:
        """Pause every assigned partition for `seconds` and rewind the failed batch, but stay
        in the group (`resume_if_due` ends the pause).

        Pausing purges what librdkafka had fetched ahead, so each partition is also sought to
        where the application stands: the batch's first offset, or its position.
        """
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        self._set_paused(True)
        self._resume_at = time.monotonic() + seconds
        first = first_offsets(records)
        for tp in self.consumer.position(assignment):
            offset = first.get((tp.topic, tp.partition), tp.offset)
            if offset != OFFSET_INVALID and offset >= 0:
                self._seek(TopicPartition(tp.topic, tp.partition, offset))

    def resume_if_due(self) -> float:
        """Resume once hold_back's time is up; the seconds still to wait (inf when not paused),
        never below 0: one clock reading for both the test and the answer."""
        if not self.paused:
            return math.inf
        left = self._resume_at - time.monotonic()
        if left <= 0:
            self.resume()
            return math.inf
        return left

    def resume(self) -> None:
        self.consumer.resume(self.consumer.assignment())
        self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        self.paused = paused
        CONSUMER_PAUSED.labels(self.service).set(int(paused))

    def close(self) -> None:
        """Leave the group; librdkafka commits the stored offsets first."""
        self.consumer.close()

    def _seek(self, tp: TopicPartition) -> None:
        try:
            self.consumer.seek(tp)
        except KafkaException as exc:
            # Partition no longer ours: its new owner starts from the last commit anyway.
            log.warning("cannot rewind %s[%d]: %s", tp.topic, tp.partition, exc)


def join_group(settings: ConsumerSettings, service: str, topics: Sequence[str]) -> GroupMember:
    """Subscribe a new member of `settings.group_id` to `topics`."""
    config: dict[str, object] = {
        **base_config(settings, f"{service}-{settings.group_id}"),
        "group.id": settings.group_id,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 5),
        "max.poll.interval.ms": settings.max_poll_interval_ms,
        # At-least-once: only what `finished` stored is committed (0 = commit each batch instead).
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": settings.commit_interval_ms,
        "auto.offset.reset": "earliest",
        "statistics.interval.ms": 5000,
    }
    instance_id = settings.instance_id()
    if instance_id:
        config["group.instance.id"] = instance_id
    for topic in topics:
        CONSUMED.labels(service, topic)  # exported at 0 from the start

    def connect(member: GroupMember) -> Consumer:
        consumer = Consumer(
            {
                **config,
                "stats_cb": lambda stats: record_consumer_stats(service, stats, member.assigned),
                "error_cb": member.on_error,
                "on_commit": member.on_commit,
            }
        )
        consumer.subscribe(
            list(topics), on_assign=member.on_assign, on_revoke=member.on_revoke, on_lost=member.on_lost
        )
        log.info("joining group %s as %s", settings.group_id, instance_id or "a dynamic member")
        return consumer

    return GroupMember(None, service, connect, commit_each_batch=settings.commit_interval_ms == 0)


def _is_fatal(err: KafkaError) -> bool:
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


def next_offsets(records: Iterable[Message]) -> list[TopicPartition]:
    """The offsets to commit after `records`: one past the last of each partition."""
    highest: dict[Partition, int] = {}
    for msg in records:
        topic, partition, offset = position(msg)
        highest[topic, partition] = max(highest.get((topic, partition), -1), offset)
    return [TopicPartition(t, p, off + 1) for (t, p), off in highest.items()]


def first_offsets(records: Iterable[Message]) -> dict[Partition, int]:
    """Where each partition of a failed batch must be consumed again from."""
    first: dict[Partition, int] = {}
    for msg in records:
        topic, partition, offset = position(msg)
        first[topic, partition] = min(first.get((topic, partition), offset), offset)
    return first


def describe(partitions: list[TopicPartition]) -> str:
    return (
        ", ".join(
            f"{tp.topic}[{tp.partition}]" + (f"@{tp.offset}" if tp.offset != OFFSET_INVALID else "")
            for tp in partitions
        )
        or "nothing"
    )


def _age(msg: Message, now: float) -> float:
    """Seconds since the record was produced (its CreateTime); 0 when it carries no time."""
    kind, ms = msg.timestamp()
    return max(0.0, now - ms / 1000) if kind != TIMESTAMP_NOT_AVAILABLE else 0.0
