"""Publisher: what it retries, what it reports, and that it never raises for a broker blip.

The retry logic runs against a scripted stand-in for librdkafka's Producer with a fake clock
(deterministic, no sleeps); two tests use the real librdkafka Producer with no broker at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import REGISTRY

from iot_shared.publisher import (
    FIRST_RETRY_SECONDS,
    Headers,
    Key,
    Publisher,
    is_retriable,
)
from iot_shared.settings import ServiceSettings

HANG = KafkaError(KafkaError._APPLICATION, "test: no delivery report until deliver_late()")


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeMessage:
    _topic: str
    _key: Key

    def topic(self) -> str:
        return self._topic

    def key(self) -> Key:
        return self._key


@dataclass
class Produced:
    at: float
    topic: str
    value: bytes
    key: Key
    headers: Headers | None


@dataclass
class FakeProducer:
    """librdkafka as the Publisher sees it: `produce` raises or queues, `poll`/`flush` report.

    `raises` and `reports` are scripts consumed one per `produce` call (None: accepted and
    delivered). Waiting advances the fake clock by the whole timeout when nothing is reported.
    """

    clock: FakeClock
    raises: list[BaseException | None] = field(default_factory=list)
    reports: list[KafkaError | None] = field(default_factory=list)
    produced: list[Produced] = field(default_factory=list)
    queued: list[tuple[Callable[[Any, Any], None], KafkaError | None, FakeMessage]] = field(
        default_factory=list
    )
    hung: list[tuple[Callable[[Any, Any], None], FakeMessage]] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: Key = None,
        *,
        on_delivery: Callable[[Any, Any], None] | None = None,
        headers: Headers | None = None,
    ) -> None:
        error = self.raises.pop(0) if self.raises else None
        if error is not None:
            raise error
        assert isinstance(value, bytes) and on_delivery is not None
        self.produced.append(Produced(self.clock.now, topic, value, key, headers))
        report = self.reports.pop(0) if self.reports else None
        if report is HANG:
            self.hung.append((on_delivery, FakeMessage(topic, key)))
        else:
            self.queued.append((on_delivery, report, FakeMessage(topic, key)))

    def poll(self, timeout: float = -1) -> int:
        served, self.queued = self.queued, []
        for callback, report, msg in served:
            callback(report, msg)
        if not served:
            self.clock.now += max(0.0, timeout)
        return len(served)

    def flush(self, timeout: float = -1) -> int:
        self.poll(0)
        while self.queued:  # reports served during a flush may queue more
            self.poll(0)
        if self.hung:
            self.clock.now += max(0.0, timeout)
        return len(self.hung)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    def deliver_late(self) -> None:
        hung, self.hung = self.hung, []
        for callback, msg in hung:
            callback(None, msg)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> FakeProducer:
    return FakeProducer(clock)


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"  # fresh metric labels for each test


def publisher(fake: FakeProducer, topics: tuple[str, ...] = ()) -> Publisher:
    return Publisher(ServiceSettings(), "test", topics, producer=fake, clock=fake.clock)


def counter(name: str, topic: str) -> float | None:
    return REGISTRY.get_sample_value(f"iot_kafka_{name}_total", {"service": "test", "topic": topic})


def err(code: int) -> KafkaError:
    return KafkaError(code)


def test_a_clean_run_reports_nothing(fake: FakeProducer, topic: str) -> None:
    pub = publisher(fake)
    for i in range(3):
        pub.send(topic, b"v%d" % i, key=f"k{i}")
    assert pub.flush(10) == []
    assert counter("delivered_messages", topic) == 3
    assert counter("delivery_failures", topic) == 0


def test_counters_exist_at_zero_for_the_named_topics_before_any_send(fake: FakeProducer, topic: str) -> None:
    publisher(fake, topics=(topic,))
    assert counter("delivered_messages", topic) == 0
    assert counter("delivery_failures", topic) == 0


def test_a_delivery_that_fails_retriably_is_produced_again_unchanged(fake: FakeProducer, topic: str) -> None:
    # What the broker restart did: the partitions vanished from the metadata for a moment.
    fake.reports = [err(KafkaError._UNKNOWN_PARTITION), err(KafkaError._MSG_TIMED_OUT), None]
    pub = publisher(fake)
    pub.send(topic, b"image", key="id-1", headers=[("h", b"1")])
    assert pub.flush(60) == []
    assert [(p.topic, p.value, p.key, p.headers) for p in fake.produced] == [
        (topic, b"image", "id-1", [("h", b"1")])
    ] * 3
    assert counter("delivered_messages", topic) == 1
    assert counter("delivery_failures", topic) == 0


def test_a_produce_that_raises_retriably_does_not_escape_and_backs_off(
    fake: FakeProducer, clock: FakeClock, topic: str
) -> None:
    unknown_topic = KafkaException(err(KafkaError._UNKNOWN_TOPIC))
    fake.raises = [unknown_topic, unknown_topic, unknown_topic]
    pub = publisher(fake)
    start = clock.now
    pub.send(topic, b"image", key="id-1")  # raised inside: kept for a retry
    assert fake.produced == [] and pub.outstanding == 1
    assert pub.flush(60) == []
    # Tried at 0 s, then after 0.25, 0.5 and 1 s more: exponential backoff.
    first = FIRST_RETRY_SECONDS
    assert [p.at - start for p in fake.produced] == [pytest.approx(first + 2 * first + 4 * first)]
    assert counter("delivered_messages", topic) == 1


def test_the_backoff_starts_again_after_a_successful_delivery(
    fake: FakeProducer, clock: FakeClock, topic: str
) -> None:
    fake.reports = [err(KafkaError._TRANSPORT), None, err(KafkaError._TRANSPORT), None]
    pub = publisher(fake)
    pub.send(topic, b"a", key="a")
    assert pub.flush(60) == []
    t0 = clock.now
    pub.send(topic, b"b", key="b")
    assert pub.flush(60) == []
    assert fake.produced[-1].at - t0 == FIRST_RETRY_SECONDS


def test_a_failure_that_lasts_is_reported_at_the_deadline_by_name(
    fake: FakeProducer, clock: FakeClock, topic: str
) -> None:
    fake.reports = [err(KafkaError._UNKNOWN_PARTITION)] * 1000
    pub = publisher(fake)
    pub.send(topic, b"image", key="id-1")
    pub.send(topic, b"image", key="id-2")
    start = clock.now
    undelivered = pub.flush(30)
    assert clock.now - start == pytest.approx(30)
    assert [(u.topic, u.key, u.error.code()) for u in undelivered] == [
        (topic, "id-1", KafkaError._UNKNOWN_PARTITION),
        (topic, "id-2", KafkaError._UNKNOWN_PARTITION),
    ]
    assert all(u.attempts > 3 for u in undelivered)
    assert "id-1: _UNKNOWN_PARTITION" in str(undelivered[0])
    assert counter("delivery_failures", topic) == 2
    # Reported once: the next flush starts clean.
    assert pub.flush(30) == [] and pub.outstanding == 0


def test_a_non_retriable_delivery_failure_is_reported_at_once_and_not_retried(
    fake: FakeProducer, topic: str
) -> None:
    fake.reports = [err(KafkaError.MSG_SIZE_TOO_LARGE), None]
    pub = publisher(fake)
    pub.send(topic, b"huge", key="big")
    pub.send(topic, b"small", key="ok")
    undelivered = pub.flush(60)
    assert [(u.key, u.error.code(), u.attempts) for u in undelivered] == [
        ("big", KafkaError.MSG_SIZE_TOO_LARGE, 1)
    ]
    assert [p.key for p in fake.produced] == ["big", "ok"]
    assert counter("delivery_failures", topic) == 1 and counter("delivered_messages", topic) == 1


def test_a_fatal_error_from_produce_is_reported_not_retried(fake: FakeProducer, topic: str) -> None:
    fatal = KafkaError(KafkaError._FATAL, "idempotence: fatal", fatal=True)
    fake.raises = [KafkaException(fatal)]
    pub = publisher(fake)
    pub.send(topic, b"image", key="id-1")
    assert [u.error.code() for u in pub.flush(60)] == [KafkaError._FATAL]
    assert fake.produced == []


def test_a_message_still_in_flight_at_the_deadline_is_reported_once_and_then_forgotten(
    fake: FakeProducer, topic: str
) -> None:
    fake.reports = [HANG]
    pub = publisher(fake)
    pub.send(topic, b"image", key="slow")
    [undelivered] = pub.flush(5)
    assert (undelivered.key, undelivered.error.code()) == ("slow", KafkaError._TIMED_OUT)
    fake.deliver_late()  # its report comes after all: counted, not reported or sent again
    assert pub.flush(5) == [] and len(fake.produced) == 1
    assert counter("delivered_messages", topic) == 1


def test_a_full_local_queue_is_waited_out_in_send(fake: FakeProducer, topic: str) -> None:
    fake.raises = [BufferError(), BufferError()]
    pub = publisher(fake)
    pub.send(topic, b"image", key="id-1")
    assert len(fake.produced) == 1 and pub.flush(5) == []


def test_readiness_says_why_kafka_is_not_ready(fake: FakeProducer) -> None:
    ok, detail = publisher(fake).readiness()
    assert not ok and "kafka unreachable" in detail


@pytest.mark.parametrize(
    ("error", "retriable"),
    [
        (err(KafkaError._UNKNOWN_PARTITION), True),
        (err(KafkaError._UNKNOWN_TOPIC), True),
        (err(KafkaError._MSG_TIMED_OUT), True),
        (err(KafkaError._TRANSPORT), True),
        (err(KafkaError._ALL_BROKERS_DOWN), True),
        (err(KafkaError.NOT_LEADER_FOR_PARTITION), True),
        (err(KafkaError.LEADER_NOT_AVAILABLE), True),
        (err(KafkaError.NOT_ENOUGH_REPLICAS), True),
        (KafkaError(KafkaError.CONCURRENT_TRANSACTIONS, retriable=True), True),
        (err(KafkaError.MSG_SIZE_TOO_LARGE), False),
        (err(KafkaError.TOPIC_AUTHORIZATION_FAILED), False),
        (err(KafkaError._PURGE_QUEUE), False),
        (KafkaError(KafkaError._TRANSPORT, fatal=True), False),
        (KafkaError(KafkaError._FATAL, fatal=True), False),
    ],
    ids=lambda v: v.name() if isinstance(v, KafkaError) else str(v),
)
def test_which_errors_are_worth_another_try(error: KafkaError, retriable: bool) -> None:
    assert is_retriable(error) is retriable


# --- the real librdkafka, no broker ---------------------------------------------------


def real_publisher(**extra: str) -> Publisher:
    # Port 1: nothing listens; librdkafka keeps trying to connect, quietly.
    settings = ServiceSettings(
        kafka_bootstrap_servers="127.0.0.1:1", kafka_extra_config={"log_level": "0", **extra}
    )
    return Publisher(settings, "test")


def test_real_librdkafka_a_too_large_message_is_reported_at_once(topic: str) -> None:
    pub = real_publisher(**{"message.max.bytes": "2000"})
    pub.send(topic, b"x" * 5000, key="big")  # librdkafka refuses it in produce()
    assert pub.outstanding == 0
    [undelivered] = pub.flush(0)
    assert (undelivered.topic, undelivered.key, undelivered.attempts) == (topic, "big", 1)
    assert undelivered.error.code() == KafkaError.MSG_SIZE_TOO_LARGE


def test_real_librdkafka_no_broker_the_flush_is_bounded_and_names_the_message(topic: str) -> None:
    pub = real_publisher(**{"message.timeout.ms": "50"})
    pub.send(topic, b"image", key="id-1")
    [undelivered] = pub.flush(0.5)
    assert (undelivered.topic, undelivered.key) == (topic, "id-1")
    # Timed out in librdkafka (then retried), or still queued when the flush gave up.
    assert undelivered.error.code() in {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT}
    assert counter("delivery_failures", topic) == 1
