"""A consumer group member that never commits on its own: a service commits a batch's offsets
only after everything it produced for that batch is acknowledged (or written to CouchDB).

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


class GroupMember:
    """One member of a consumer group, with its assignment tracked for metrics and pausing.

    A fatal consumer error ends this librdkafka consumer for good. Seen after a broker restart:
    the broker fences a static member as if another process had its instance ID. The member
    then rejoins as a new consumer (nothing was committed for what it held, so nothing is lost);
    fenced again and again, another live process really has its ID, and it gives up.
    """

    def __init__(
        self,
        consumer: Consumer | None,
        service: str,
        connect: Callable[[GroupMember], Consumer] | None = None,
        commit_interval: float = 0.0,
    ) -> None:
        """`connect` makes a new subscribed consumer for this member (at once when `consumer`
        is None, and to rejoin after a fatal error). Processed offsets are committed at most
        every `commit_interval` seconds (0 = after every batch), and always before a partition
        is given up or the member leaves."""
        self.service = service
        self.commit_interval = commit_interval
        self.assigned: set[Partition] = set()
        self._uncommitted: dict[Partition, int] = {}  # next offset to read, processed up to it
        self._committed_at = -math.inf
        self.paused = False
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

    def on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Incremental: `partitions` are the ones added; librdkafka assigns them after we return.
        REBALANCES.labels(self.service, "assign").inc()
        self.assigned.update((tp.topic, tp.partition) for tp in partitions)
        log.info("assigned %s", describe(partitions))

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        REBALANCES.labels(self.service, "revoke").inc()
        # Still ours until we return: what we finished is committed, not redone by the next owner.
        self.commit_now({(tp.topic, tp.partition) for tp in partitions})
        self._forget(partitions)
        log.info("revoked %s", describe(partitions))

    def on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group moved on without us (we were silent too long); their new owner restarts
        # from the last commit, so nothing of ours may be committed for them any more.
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

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.assigned.discard((tp.topic, tp.partition))
            self._uncommitted.pop((tp.topic, tp.partition), None)
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
        """The records of one poll; errors that are not records are logged, not returned."""
        self.raise_if_fatal()
        records = []
        ages: dict[str, float] = {}
        now = time.time()
        for msg in self.consumer.consume(max_messages, timeout):
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
        self._uncommitted.clear()  # that consumer is gone: its processed records come again
        self.paused = False
        CONSUMER_PAUSED.labels(self.service).set(0)
        self.fatal = None
        self.consumer = self._connect(self)

    def commit(self, records: Sequence[Message]) -> bool:
        """Mark a batch processed and commit what is marked once `commit_interval` has passed
        since the last commit; False when any partition's commit failed.

        Fewer commits cost the broker less (each is a request and a write). What is processed
        but not yet committed when the process dies is consumed again, like a failed commit:
        every step of this pipeline is idempotent.
        """
        for tp in next_offsets(records):
            self._uncommitted[tp.topic, tp.partition] = tp.offset
        return self.commit_due()

    def commit_due(self) -> bool:
        """Commit what is marked if `commit_interval` has passed (the loop also asks when idle)."""
        if time.monotonic() - self._committed_at < self.commit_interval:
            return True
        return self.commit_now()

    def commit_now(self, partitions: set[Partition] | None = None) -> bool:
        """Commit what is marked (of `partitions` only, if given) at once."""
        wanted = {tp: off for tp, off in self._uncommitted.items() if partitions is None or tp in partitions}
        if not wanted:
            return True
        self._committed_at = time.monotonic()
        offsets = [TopicPartition(topic, partition, off) for (topic, partition), off in wanted.items()]
        try:
            results = self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed, will be tried again: %s", exc)
            return False
        failed = [tp for tp in results or [] if tp.error is not None]
        for tp in failed:
            log.warning("commit of %s[%d] failed, tried again later: %s", tp.topic, tp.partition, tp.error)
        for tp in results or []:
            key = (tp.topic, tp.partition)
            if tp.error is None and self._uncommitted.get(key) == tp.offset:
                del self._uncommitted[key]
        return not failed

    def hold_back(self, records: Sequence[Message]) -> None:
        """Pause every assigned partition and rewind the failed batch, but stay in the group.

        Pausing purges what librdkafka had fetched ahead, so each partition is also sought to
        where the application stands: the batch's first offset, or its position.
        """
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        self.paused = True
        CONSUMER_PAUSED.labels(self.service).set(1)
        first = first_offsets(records)
        for tp in self.consumer.position(assignment):
            offset = first.get((tp.topic, tp.partition), tp.offset)
            if offset != OFFSET_INVALID and offset >= 0:
                self._seek(TopicPartition(tp.topic, tp.partition, offset))

    def resume(self) -> None:
        self.consumer.resume(self.consumer.assignment())
        self.paused = False
        CONSUMER_PAUSED.labels(self.service).set(0)

    def close(self) -> None:
        """Commit what was processed, then leave the group."""
        with contextlib.suppress(KafkaException, RuntimeError):
            self.commit_now()
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
        "enable.auto.commit": False,
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
            }
        )
        consumer.subscribe(
            list(topics), on_assign=member.on_assign, on_revoke=member.on_revoke, on_lost=member.on_lost
        )
        log.info("joining group %s as %s", settings.group_id, instance_id or "a dynamic member")
        return consumer

    return GroupMember(None, service, connect, settings.commit_interval_ms / 1000)


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
