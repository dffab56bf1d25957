"""The shared at-least-once loop: what gets stored for commit, dead-lettered, held back and redelivered."""

from __future__ import annotations

import json
import logging
import time

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, Message, TopicPartition
from prometheus_client import REGISTRY

from iot_shared.batch_loop import BatchLoop, RetryLaterError
from iot_shared.consumer import FatalConsumerError, GroupMember
from iot_shared.dead_letters import MAX_RECORD_BYTES, DeadLetters
from iot_shared.errors import InvalidMessageError
from iot_shared.heartbeat import Heartbeat
from iot_shared.lifecycle import StopFlag
from iot_shared.metrics import record_consumer_stats
from tests.unit.shared.fakes import FakeConsumer, RecordingPublisher


def decode(record: Message) -> int:
    value = record.value()
    if value == b"bad":
        raise InvalidMessageError("not_json", "bad")
    if value == b"boom":
        raise RecursionError("maximum recursion depth exceeded")
    return int(value or b"")


class Handler:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.batches: list[list[int]] = []

    def __call__(self, batch: list[int]) -> None:
        if self.failures:
            self.failures -= 1
            raise RetryLaterError("store down")
        self.batches.append(batch)


def make_loop(
    consumer: FakeConsumer,
    handler: Handler,
    publisher: RecordingPublisher | None = None,
    max_batch: int = 100,
    latency_target_ms: float = 0,
    heartbeat: Heartbeat | None = None,
) -> tuple[BatchLoop[int], RecordingPublisher]:
    publisher = publisher or RecordingPublisher()
    loop = BatchLoop(
        GroupMember(consumer, "unit"),
        publisher,  # type: ignore[arg-type]
        DeadLetters(publisher, "dlq", "unit"),  # type: ignore[arg-type]
        decode=decode,
        handle=handler,
        max_batch=max_batch,
        max_fill_wait_seconds=0.0,
        delivery_timeout_seconds=1.0,
        latency_target_seconds=latency_target_ms / 1000,
        backoff=lambda: lambda: 0.0,  # resume at the next step: no sleeping in unit tests
        heartbeat=heartbeat or Heartbeat(),
    )
    return loop, publisher


def test_a_handled_batch_is_stored_for_commit_one_past_its_last_record_per_partition() -> None:
    consumer = FakeConsumer({("t", 0): [b"1", b"2"], ("t", 1): [b"3"]})
    handler = Handler()
    loop, _ = make_loop(consumer, handler)
    assert loop.step() is True
    assert handler.batches == [[1, 2, 3]]
    assert consumer.stored == {("t", 0): 2, ("t", 1): 1}
    assert consumer.committed == {}  # librdkafka commits it: on its interval, on revoke, on close


def test_a_batch_is_what_has_arrived_without_waiting_to_fill_it() -> None:
    consumer = FakeConsumer({("t", 0): [b"1", b"2", b"3"]})
    handler = Handler()
    loop, _ = make_loop(consumer, handler, max_batch=64)
    assert loop.step() is True
    assert handler.batches == [[1, 2, 3]]
    assert consumer.polls == [(64, 0)]  # taken at once: three records do not wait for 61 more
    assert loop.step() is None  # nothing left: block for the first record only
    assert consumer.polls[1:] == [(64, 0), (1, 0.5)]


def test_invalid_and_undecodable_records_are_dead_lettered_and_the_rest_goes_on() -> None:
    consumer = FakeConsumer({("t", 0): [b"1", b"bad", b"boom", b"4"]})
    handler = Handler()
    loop, publisher = make_loop(consumer, handler)
    assert loop.step() is True
    assert handler.batches == [[1, 4]]
    reasons = [(reason, headers["dlq.detail"]) for reason, _, headers in publisher.dead_letters()]
    assert reasons == [
        ("not_json", b"bad"),
        ("undecodable", b"RecursionError: maximum recursion depth exceeded"),
    ]
    assert consumer.stored == {("t", 0): 4}


def test_a_failed_batch_is_held_back_then_consumed_again_from_its_first_offset() -> None:
    consumer = FakeConsumer({("t", 0): [b"1", b"2", b"3"], ("t", 1): [b"4", b"5"]})
    handler = Handler(failures=2)
    loop, _ = make_loop(consumer, handler, max_batch=2)

    assert loop.step() is False  # records 1, 2 of partition 0: the store is down
    assert consumer.paused == {("t", 0), ("t", 1)}
    assert consumer.stored == {}
    assert REGISTRY.get_sample_value("iot_consumer_paused", {"service": "unit"}) == 1

    assert loop.step() is False  # resumed, the same records, still down
    assert loop.step() is True
    assert loop.step() is True
    assert loop.step() is True
    assert [x for batch in handler.batches for x in batch] == [1, 2, 3, 4, 5]  # nothing skipped
    assert consumer.stored == {("t", 0): 3, ("t", 1): 2}
    assert consumer.paused == set()
    assert REGISTRY.get_sample_value("iot_consumer_paused", {"service": "unit"}) == 0


def test_nothing_after_a_failed_batch_is_handled_before_it_and_dead_letters_wait_their_turn() -> None:
    consumer = FakeConsumer({("t", 0): [b"1", b"2", b"3", b"4", b"bad"]})
    handler = Handler(failures=1)
    loop, publisher = make_loop(consumer, handler, max_batch=2)
    assert loop.step() is False  # [1, 2] failed: rewound to its first record
    assert consumer.fetch[("t", 0)] == 0
    assert [loop.step() for _ in range(3)] == [True, True, True]
    assert handler.batches == [[1, 2], [3, 4]]  # a batch of only bad records is not handled
    assert [reason for reason, _, _ in publisher.dead_letters()] == ["not_json"]  # sent once it is its turn
    assert consumer.stored == {("t", 0): 5}


def test_the_member_keeps_polling_while_held_back() -> None:
    consumer = FakeConsumer({("t", 0): [b"1"]})
    loop, _ = make_loop(consumer, Handler(failures=1))
    loop.backoff = lambda: lambda: 3600.0
    loop._next_delay = loop.backoff()
    assert loop.step() is False
    polls = len(consumer.polls)
    for _ in range(3):
        assert loop.step() is None  # paused: nothing handed out, but the group sees us poll
    assert len(consumer.polls) >= polls + 3
    assert consumer.paused == {("t", 0)}


def test_a_held_back_member_never_polls_with_a_negative_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # librdkafka waits forever on any negative timeout. Seen in CI: the resume time passed
    # between reading the clock to decide and reading it again to answer, the poll got -0.0001 s,
    # and the paused sink hung in consume() for good.
    consumer = FakeConsumer({("t", 0): [b"1"]})
    loop, _ = make_loop(consumer, Handler(failures=1))
    loop.backoff = lambda: lambda: 5.0
    loop._next_delay = loop.backoff()
    clock = iter([100.0, 104.9999, 105.0001])  # hold back at 100; then just before, just after 105
    monkeypatch.setattr("iot_shared.consumer.time.monotonic", lambda: next(clock, 105.0001))
    assert loop.step() is False
    loop.step()
    assert all(timeout >= 0 for _, timeout in consumer.polls), consumer.polls
    member = GroupMember(consumer, "unit")
    member.consume(1, -0.0001)
    assert consumer.polls[-1][1] == 0


def test_unacknowledged_output_holds_the_batch_back_like_a_failed_write() -> None:
    consumer = FakeConsumer({("t", 0): [b"1", b"2"]})
    publisher = RecordingPublisher(failures_to_report=[[KafkaError(KafkaError._MSG_TIMED_OUT)]])
    handler = Handler()
    loop, _ = make_loop(consumer, handler, publisher)
    assert loop.step() is False
    assert consumer.stored == {}
    assert loop.step() is True
    assert handler.batches == [[1, 2], [1, 2]]  # handled again: its output is resent
    assert consumer.stored == {("t", 0): 2}


def test_a_failed_commit_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    member = GroupMember(FakeConsumer({}), "unit")
    with caplog.at_level(logging.WARNING, "iot_shared.consumer"):
        member.on_commit(KafkaError(KafkaError.REBALANCE_IN_PROGRESS), [TopicPartition("t", 1, 7)])
    assert "commit failed, tried again later" in caplog.text


def test_offsets_of_a_partition_revoked_during_the_batch_are_not_stored() -> None:
    consumer = FakeConsumer({("t", 0): [b"1"]})
    member = GroupMember(consumer, "unit")
    gone = Message(topic="t", partition=5, offset=3, value=b"1")  # no longer assigned
    member.finished([gone])  # librdkafka refuses; the next owner consumes it again
    assert consumer.stored == {}


def test_an_idle_step_polls_the_publisher_so_librdkafka_s_lines_come_on_time() -> None:
    loop, publisher = make_loop(FakeConsumer({("t", 0): []}), Handler())
    assert loop.step() is None
    assert publisher.polls == 1


def test_a_fatal_consumer_error_stops_the_loop_with_a_clear_message() -> None:
    loop, _ = make_loop(FakeConsumer({("t", 0): []}), Handler())
    loop.member.on_error(KafkaError(KafkaError._FENCED, "fenced by a member with the same ID", fatal=True))
    with pytest.raises(FatalConsumerError, match="fenced"):
        loop.step()
    assert loop.readiness()[0] is False


def test_a_fenced_member_rejoins_as_a_new_consumer_and_gives_up_when_fenced_again_and_again() -> None:
    fatal = KafkaError(KafkaError._FATAL, "Static consumer fenced by other consumer", fatal=True)
    consumers = [FakeConsumer({("t", 0): [b"1", b"2"]}) for _ in range(5)]
    member = GroupMember(None, "unit", connect=lambda _member: consumers.pop(0))
    first = member.consumer
    member.on_assign(None, [TopicPartition("t", 0)])
    member.on_error(fatal)  # what error_cb reports after a broker restart
    records = member.consume(10, 0)  # rejoins first, then polls the new consumer
    assert member.consumer is not first and member.fatal is None and not member.assigned
    assert [m.value() for m in records] == [b"1", b"2"]
    for _ in range(2):
        member.on_error(fatal)
        member.consume(10, 0)
    member.on_error(fatal)  # a fourth time within five minutes: another process has our ID
    with pytest.raises(FatalConsumerError, match="IOT_GROUP_INSTANCE_ID"):
        member.consume(10, 0)


def test_lag_is_reported_only_for_partitions_this_member_holds() -> None:
    member = GroupMember(FakeConsumer({}), "lagtest")
    member.on_assign(None, [TopicPartition("t", 0), TopicPartition("t", 1)])
    stats = {"topics": {"t": {"partitions": {str(p): {"consumer_lag": 7} for p in (0, 1, 2)}}}}
    record_consumer_stats("lagtest", json.dumps(stats), member.assigned)

    def lag(partition: int) -> float | None:
        labels = {"service": "lagtest", "topic": "t", "partition": str(partition)}
        return REGISTRY.get_sample_value("iot_consumer_lag_messages", labels)

    assert (lag(0), lag(1), lag(2)) == (7, 7, None)
    member.on_revoke(None, [TopicPartition("t", 1)])
    record_consumer_stats("lagtest", json.dumps(stats), member.assigned)  # stale statistics
    assert (lag(0), lag(1)) == (7, None)
    member.on_lost(None, [TopicPartition("t", 0)])
    assert lag(0) is None


def test_lag_age_is_the_oldest_record_just_read_and_zero_once_nothing_is_unread() -> None:
    hour_ago = int((time.time() - 3600) * 1000)
    consumer = FakeConsumer({("iot-topic", 0): [b"a", b"b"]}, [(TIMESTAMP_CREATE_TIME, hour_ago)] * 2)
    member = GroupMember(consumer, "agetest")

    def age() -> float | None:
        return REGISTRY.get_sample_value(
            "iot_consumer_lag_seconds", {"service": "agetest", "topic": "iot-topic"}
        )

    assert len(member.consume(10, 0)) == 2
    assert 3590 < (age() or 0) < 3700  # the image waited an hour to be read
    assert member.consume(10, 0) == [] and (age() or 0) > 3590  # an empty poll that did not wait says nothing
    assert member.consume(10, 0.01) == [] and age() == 0  # one that waited: nothing is unread


def test_a_dead_letter_of_a_record_just_under_the_broker_limit_still_fits() -> None:
    publisher = RecordingPublisher()
    record = Message(topic="iot-topic", partition=0, offset=9, key=b"k", value=b"x" * 999_850)
    DeadLetters(publisher, "dlq", "unit").send(record, InvalidMessageError("too_large", "big"))  # type: ignore[arg-type]
    [(_, value, key, headers)] = publisher.sent
    assert len(value) + len(key or "") + sum(len(k) + len(v) for k, v in headers.items()) <= MAX_RECORD_BYTES
    assert headers["dlq.truncated.from"] == b"999850"
    assert value == b"x" * len(value) and len(value) > 900_000


def test_a_batch_is_capped_by_the_latency_target_while_records_are_young() -> None:
    now = time.time()
    young = [(TIMESTAMP_CREATE_TIME, int(now * 1000))] * 10
    consumer = FakeConsumer({("t", 0): [str(i).encode() for i in range(10)]}, timestamps=young)
    handler = Handler()
    loop, _ = make_loop(consumer, handler, max_batch=64, latency_target_ms=50)
    loop.sizer.clock = lambda: now
    loop.sizer.handled(1, 0.009)  # 9 ms a record: 5 records fit in 50 ms
    loop.sizer.consumed(consumer.logs[("t", 0)][:1])
    while loop.step():
        pass
    assert [len(b) for b in handler.batches] == [5, 5]
    assert consumer.stored == {("t", 0): 10}


def test_a_filling_batch_stops_waiting_once_it_is_complete() -> None:
    consumer = FakeConsumer({("t", 0): [b"1", b"2", b"3", b"4", b"5"]})
    consumer.per_poll = 1  # records arrive one at a time
    handler = Handler()
    loop, _ = make_loop(consumer, handler)
    loop.max_fill_wait_seconds = 60.0  # never reached: `complete` ends the wait
    loop.complete = lambda records: b"2" in [r.value() for r in records]
    assert loop.step() is True
    # 1 came, the wait brought 2 and took 3, which had arrived too; then the batch was complete.
    assert handler.batches == [[1, 2, 3]]
    assert all(timeout < 60.0 for _, timeout in consumer.polls)


def test_what_was_finished_is_committed_when_the_member_leaves() -> None:
    consumer = FakeConsumer({("t", 0): [b"1", b"2", b"3"], ("t", 1): [b"4"]})
    loop, _ = make_loop(consumer, Handler(), max_batch=1)
    while loop.step():
        pass
    loop.member.close()  # librdkafka's auto-commit commits what is stored as the consumer closes
    assert consumer.committed == {("t", 0): 3, ("t", 1): 1}


def test_with_no_commit_interval_each_batch_is_committed_as_it_finishes() -> None:
    consumer = FakeConsumer({("t", 0): [b"1", b"2"]})
    loop, _ = make_loop(consumer, Handler(), max_batch=1)
    loop.member.commit_each_batch = True
    assert loop.step() is True
    assert consumer.committed == {("t", 0): 1}
    assert loop.step() is True
    assert consumer.committed == {("t", 0): 2}


# --- the heartbeat /healthz reads ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_held_back_loop_keeps_beating_while_it_polls() -> None:
    # CouchDB down for good: every batch fails, the member stays paused for an hour, and the
    # loop goes round polling. That is an outage, not a hang: /healthz must stay 200.
    clock = Clock()
    heartbeat = Heartbeat("unit-beat", stall_after=60.0, clock=clock)
    consumer = FakeConsumer({("t", 0): [b"1"]})
    loop, _ = make_loop(consumer, Handler(failures=1000), heartbeat=heartbeat)
    loop.backoff = lambda: lambda: 3600.0
    loop._next_delay = loop.backoff()
    assert loop.step() is False
    for _ in range(10):  # ten steps 50 s apart: 500 s in all, the limit is 60 s
        clock.now += 50
        assert loop.step() is None  # paused: a poll, nothing handed out
        assert heartbeat.liveness()[0]
    assert consumer.paused == {("t", 0)}
    clock.now += 61  # and when it stops going round, /healthz says so
    assert heartbeat.liveness() == (False, "main loop stalled for 61 s (limit 60 s)")


def test_run_beats_each_time_round_including_before_between() -> None:
    clock = Clock()
    heartbeat = Heartbeat("unit-beat", stall_after=60.0, clock=clock)

    class SlowConsumer(FakeConsumer):
        def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
            clock.now += 20  # each poll, so a step takes 20 to 40 s
            return super().consume(num_messages, timeout)

    loop, _ = make_loop(SlowConsumer({("t", 0): [b"1", b"2"]}), Handler(), heartbeat=heartbeat)
    stop, health = StopFlag(), []

    def between() -> None:  # a slow sweep: 59 s, after a step of 20 to 40 s
        clock.now += 59
        health.append(heartbeat.liveness()[0])
        if len(health) == 5:
            stop.set()

    loop.run(stop, between)
    assert health == [True] * 5


def test_a_poll_that_never_returns_is_a_stall() -> None:
    # The bug behind /healthz watching the loop: a sink hung in consume() for good (a negative
    # timeout) while its HTTP thread kept answering 200.
    clock = Clock()
    heartbeat = Heartbeat("unit-beat", stall_after=60.0, clock=clock)
    seen: list[tuple[bool, str]] = []

    class HungConsumer(FakeConsumer):
        def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
            clock.now += 600  # what /healthz would answer ten minutes into it
            seen.append(heartbeat.liveness())
            return []

    loop, _ = make_loop(HungConsumer({("t", 0): []}), Handler(), heartbeat=heartbeat)
    loop.step()
    assert seen[0] == (False, "main loop stalled for 600 s (limit 60 s)")


def test_a_flush_may_take_its_whole_timeout_on_top_of_the_limit() -> None:
    # The broker is away: a batch's flush waits up to IOT_DELIVERY_TIMEOUT_SECONDS, which may be
    # set above the stall limit; the loop announces it with the beat before it.
    clock = Clock()
    heartbeat = Heartbeat("unit-beat", stall_after=60.0, clock=clock)
    seen: list[bool] = []

    class SlowPublisher(RecordingPublisher):
        def flush(self, timeout: float) -> list[object]:
            clock.now += timeout + 59
            seen.append(heartbeat.liveness()[0])
            clock.now += 2
            seen.append(heartbeat.liveness()[0])
            return super().flush(timeout)

    publisher = SlowPublisher()
    loop, _ = make_loop(FakeConsumer({("t", 0): [b"1"]}), Handler(), publisher, heartbeat=heartbeat)
    loop.delivery_timeout_seconds = 300.0
    assert loop.step() is True
    assert seen == [True, False]  # alive for the timeout plus the limit, not a second more
