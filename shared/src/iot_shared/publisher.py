"""The one Kafka producer of each service: idempotent (acks=all), riding out broker blips.

librdkafka already retries what the broker answers with a retriable error, but some failures
reach the application: right after a broker restart the topic's metadata can briefly show no
partitions, so queued messages fail with `_UNKNOWN_PARTITION` and `produce()` itself raises
`_UNKNOWN_TOPIC`; a broker away for longer than `message.timeout.ms` fails them with
`_MSG_TIMED_OUT`. `Publisher` keeps every message (topic, value, key, headers) until the broker
acknowledged it and re-produces it, with backoff, after any retriable failure, until the
deadline of the next `flush`. Only what is still undelivered then is reported, each message by
name; a non-retriable failure (too large, fatal idempotence error, authorization) is reported
at once and never retried. A re-produced message may be stored twice (its first delivery may
have been written before it timed out) and out of order; the pipeline is keyed by image ID and
every consumer is idempotent, so neither matters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from iot_shared.kafka import as_text, base_config
from iot_shared.metrics import DELIVERED, DELIVERY_FAILURES
from iot_shared.settings import ServiceSettings

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]
Key = str | bytes | None
DeliveryCallback = Callable[[KafkaError | None, Message], None]

# Failures worth another try: the broker or its metadata is away for a while, not the message
# at fault. librdkafka marks only some broker errors `retriable()`, and none of its local ones.
RETRIABLE_CODES = frozenset(
    {
        # local (librdkafka)
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_BROKER,
        KafkaError._QUEUE_FULL,
        KafkaError._NODE_UPDATE,
        KafkaError._WAIT_CACHE,
        # broker
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,  # NOT_LEADER_OR_FOLLOWER
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.THROTTLING_QUOTA_EXCEEDED,
    }
)
# Backoff between rounds of re-produced messages; reset by the next successful delivery.
FIRST_RETRY_SECONDS = 0.25
MAX_RETRY_SECONDS = 5.0


def is_retriable(err: KafkaError) -> bool:
    """Will the same message, sent again later, likely get through?"""
    if err.fatal():
        return False
    return bool(err.retriable()) or err.code() in RETRIABLE_CODES


@dataclass(frozen=True)
class Undelivered:
    """A message the broker did not acknowledge: where it was going, its key, and why."""

    topic: str
    key: Key
    error: KafkaError
    attempts: int

    def __str__(self) -> str:
        return (
            f"{self.topic}/{as_text(self.key)}: {self.error.name()} ({self.error.str()}) "
            f"after {self.attempts} attempts"
        )


class ProducerClient(Protocol):
    """What `Publisher` uses of confluent_kafka.Producer (a test may pass a fake)."""

    def produce(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: Key = None,
        *,
        on_delivery: DeliveryCallback | None = None,
        headers: Headers | None = None,
    ) -> None: ...
    def poll(self, timeout: float = -1) -> int: ...
    def flush(self, timeout: float = -1) -> int: ...
    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...


@dataclass
class _Outgoing:
    topic: str
    value: bytes
    key: Key
    headers: Headers | None
    attempts: int = 0
    error: KafkaError | None = field(default=None)

    def undelivered(self, pending: bool = False) -> Undelivered:
        error = self.error
        if pending or error is None:
            why = "not acknowledged before the flush deadline"
            error = KafkaError(KafkaError._TIMED_OUT, f"{why} (last error: {error.name()})" if error else why)
        return Undelivered(self.topic, self.key, error, self.attempts)


class Publisher:
    """An idempotent producer (acks=all) that retries transient failures until `flush` gives up."""

    def __init__(
        self,
        settings: ServiceSettings,
        service: str,
        topics: Iterable[str] = (),
        *,
        producer: ProducerClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`topics`: label both delivery counters for them at 0 now, before the first send."""
        config = {
            **base_config(settings, service),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
        self._producer: ProducerClient = producer if producer is not None else Producer(config)
        self._service = service
        self._clock = clock
        self._labelled: set[str] = set()
        self._next_token = 0
        self._in_flight: dict[int, _Outgoing] = {}  # handed to librdkafka, no report yet
        self._retry: list[_Outgoing] = []  # failed retriably, produced again at _retry_at
        self._retry_at: float | None = None
        self._retry_round = 0  # rounds since the last successful delivery, for the backoff
        self._failed: list[Undelivered] = []  # non-retriable, since the last flush
        for topic in topics:
            self._label(topic)

    def send(self, topic: str, value: bytes, key: Key = None, headers: Headers | None = None) -> None:
        """Queue a message; never raises for a broker problem (see `flush`)."""
        self._label(topic)
        self._produce(_Outgoing(topic, value, key, headers))
        self._producer.poll(0)
        self._resend_due()

    def poll(self) -> None:
        """Serve what librdkafka has queued, without waiting: delivery reports and its log lines.
        A caller with nothing to send calls it now and then, or the lines pile up and come late."""
        self._producer.poll(0)

    def readiness(self, timeout: float = 2.0) -> tuple[bool, str]:
        """For /readyz: does a broker answer a metadata request?"""
        try:
            self._producer.list_topics(timeout=timeout)
        except KafkaException as exc:
            return False, f"kafka unreachable: {exc}"
        return True, "kafka reachable"

    @property
    def outstanding(self) -> int:
        """Messages sent but neither acknowledged nor reported yet."""
        return len(self._in_flight) + len(self._retry)

    def flush(self, timeout: float) -> list[Undelivered]:
        """Wait up to `timeout` seconds for every outstanding message, re-producing those that
        fail retriably; return what is undelivered (empty when all got through).

        The list names each message: those that failed for good since the last flush, and those
        still unacknowledged at the deadline, which this publisher then forgets (a caller that
        wants them through sends them again).
        """
        deadline = self._clock() + timeout
        while True:
            self._resend_due()
            now = self._clock()
            if not self.outstanding or now >= deadline:
                break
            until = min(deadline, self._retry_at) if self._retry_at is not None else deadline
            wait = max(0.0, until - now)
            if self._in_flight:
                self._producer.flush(wait)  # returns early once every report is served
            else:
                self._producer.poll(wait)  # only retries left: wait for their round
        self._producer.poll(0)  # reports that came in at the deadline still count
        return self._give_up()

    # --- internals --------------------------------------------------------------------

    def _label(self, topic: str) -> None:
        if topic not in self._labelled:
            # Export both counters at 0 from the start, so rates and alerts see the series.
            self._labelled.add(topic)
            DELIVERED.labels(self._service, topic)
            DELIVERY_FAILURES.labels(self._service, topic)

    def _produce(self, out: _Outgoing) -> None:
        token, self._next_token = self._next_token, self._next_token + 1
        out.attempts += 1
        while True:
            try:
                self._producer.produce(
                    out.topic,
                    value=out.value,
                    key=out.key,
                    headers=out.headers,
                    on_delivery=partial(self._on_delivery, token),
                )
            except BufferError:
                # Local queue full: serve delivery reports to make room, then try again.
                self._producer.poll(0.1)
                continue
            except KafkaException as exc:
                self._failed_attempt(out, _error_of(exc))
                return
            self._in_flight[token] = out
            return

    def _on_delivery(self, token: int, err: KafkaError | None, msg: Message) -> None:
        out = self._in_flight.pop(token, None)
        if err is None:
            DELIVERED.labels(self._service, out.topic if out else msg.topic()).inc()
            self._retry_round = 0
        elif out is not None:  # None: already reported by a flush that gave up on it
            self._failed_attempt(out, err)

    def _failed_attempt(self, out: _Outgoing, err: KafkaError) -> None:
        out.error = err
        if not is_retriable(err):
            log.error("not delivered to %s (key %s), not retrying: %s", out.topic, out.key, err)
            self._report(out.undelivered())
            return
        log.debug("delivery to %s (key %s) failed, will retry: %s", out.topic, out.key, err)
        if not self._retry:
            delay = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2**self._retry_round)
            self._retry_round = min(self._retry_round + 1, 16)  # the delay is capped long before
            self._retry_at = self._clock() + delay
            log.warning("deliveries to %s failing (%s); producing them again in %.2fs", out.topic, err, delay)
        self._retry.append(out)

    def _resend_due(self) -> None:
        if not self._retry or self._retry_at is None or self._clock() < self._retry_at:
            return
        batch, self._retry, self._retry_at = self._retry, [], None
        log.info("producing %d messages again", len(batch))
        for out in batch:
            self._produce(out)

    def _report(self, undelivered: Undelivered) -> None:
        DELIVERY_FAILURES.labels(self._service, undelivered.topic).inc()
        self._failed.append(undelivered)

    def _give_up(self) -> list[Undelivered]:
        # Still with librdkafka: not acknowledged in time. Waiting for a retry: its last error.
        left = [out.undelivered(pending=True) for out in self._in_flight.values()]
        left += [out.undelivered() for out in self._retry]
        self._in_flight, self._retry, self._retry_at = {}, [], None
        for undelivered in left:
            self._report(undelivered)
        if left:
            log.error("%d messages not delivered before the flush deadline", len(left))
        failed, self._failed = self._failed, []
        return failed


def _error_of(exc: KafkaException) -> KafkaError:
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))
