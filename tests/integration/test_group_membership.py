"""Consumer group behaviour on the real broker: holding back without losing a record, a revoked
partition handed over where its owner finished, static membership after a crash, a clear exit when
the broker is unreachable, and secrets kept out of logs."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from iot_shared.consumer import GroupMember, join_group
from iot_shared.settings import ConsumerSettings
from testbed.harness import Pipeline, random_images, wait_for
from testbed.ports import free_port


def test_holding_back_rewinds_and_resumes_without_losing_or_skipping_a_record(pipeline: Pipeline) -> None:
    values = [str(i).encode() for i in range(300)]
    pipeline.send_raw(pipeline.images_topic, values)
    settings = ConsumerSettings(
        kafka_bootstrap_servers=pipeline.stack.bootstrap,
        group_id=f"{pipeline.name}-hold",
        max_batch=20,
        max_wait_ms=100,
    )
    member = join_group(settings, "holdtest", [pipeline.images_topic])
    try:
        first = wait_for("a first batch", lambda: member.consume(20, 0.5), 60)
        member.hold_back(first, 3600)  # as after a failed write: everything paused, the batch rewound
        for _ in range(5):
            assert member.consume(20, 0.2) == []  # paused, yet polling: still a member
        member.resume()
        seen: list[bytes] = []
        wait_for(
            "every record after resuming",
            lambda: len(_extend(seen, member.consume(100, 0.5))) >= len(values),
            60,
        )
        assert sorted(seen, key=int) == values  # the held-back batch came again, nothing else twice
        assert {bytes(m.value()) for m in first} <= set(seen)
    finally:
        member.close()


def _extend(acc: list[bytes], records: list) -> list[bytes]:
    acc.extend(r.value() for r in records)
    return acc


def test_a_revoked_partition_is_committed_where_its_owner_finished_before_it_moves(
    pipeline: Pipeline,
) -> None:
    topic = pipeline.images_topic
    producer = Producer({"bootstrap.servers": pipeline.stack.bootstrap})
    for partition in range(3):
        for i in range(100):
            producer.produce(topic, value=f"{partition}-{i}".encode(), partition=partition)
    assert producer.flush(30) == 0
    # An hour between commits: only the revoke itself can commit what the first member finished.
    settings = ConsumerSettings(
        kafka_bootstrap_servers=pipeline.stack.bootstrap,
        group_id=f"{pipeline.name}-handover",
        max_batch=100,
        commit_interval_ms=3_600_000,
    )
    first = join_group(settings, "handover", [topic])
    second: GroupMember | None = None
    try:
        finished: list[bytes] = []
        wait_for("the first member to finish all 300", lambda: len(_finish(first, finished)) >= 300, 60)
        second = join_group(settings, "handover", [topic])
        redone: list[bytes] = []

        def handed_over() -> set[tuple[str, int]]:
            assert first.consume(100, 0.2) == []  # serves its revoke
            assert second is not None
            _extend(redone, second.consume(100, 0.2))
            return second.assigned

        moved = wait_for("the second member to get a partition", handed_over, 60)
        [(_, partition)] = moved  # cooperative-sticky: one of three moves, the others stay
        assert _committed(pipeline, settings.group_id, topic, partition) == 100  # nothing finished is lost...
        producer.produce(topic, value=b"marker", partition=partition)
        assert producer.flush(30) == 0
        wait_for(
            "the second member to read on", lambda: b"marker" in _extend(redone, second.consume(100, 0.5)), 60
        )
        assert redone == [b"marker"]  # ...and nothing is done again
    finally:
        first.close()
        if second is not None:
            second.close()


def _committed(pipeline: Pipeline, group: str, topic: str, partition: int) -> int:
    reader = Consumer({"bootstrap.servers": pipeline.stack.bootstrap, "group.id": group})
    try:
        [tp] = reader.committed([TopicPartition(topic, partition)], timeout=30)
    finally:
        reader.close()
    return int(tp.offset)


def _finish(member: GroupMember, acc: list[bytes]) -> list[bytes]:
    """Consume a batch and mark it finished, as the loop does once its output is acknowledged."""
    records = member.consume(100, 0.5)
    member.finished(records)
    return _extend(acc, records)


def test_a_killed_static_member_gets_its_partitions_back_long_before_its_session_expires(
    pipeline: Pipeline,
) -> None:
    # A session of 60 s: without static membership the restarted sink would wait that long.
    sink = pipeline.start("sink", IOT_GROUP_INSTANCE_ID="sink-{hostname}", IOT_SESSION_TIMEOUT_MS="60000")
    first = random_images(10)
    pipeline.send_raw(pipeline.images_topic, [m.encode() for m in first])
    wait_for("the first documents", lambda: len(pipeline.documents()) == 10, 60, pipeline.alive)
    sink.kill()
    sink.start()
    second = random_images(11)
    pipeline.send_raw(pipeline.images_topic, [m.encode() for m in second])
    wait_for("documents after the restart", lambda: len(pipeline.documents()) == 21, 40, pipeline.alive)


def test_an_unreachable_broker_is_named_and_the_service_exits(pipeline: Pipeline) -> None:
    port = free_port()  # nothing listens there
    sink = pipeline.start(
        "sink", IOT_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}", IOT_STARTUP_TIMEOUT_SECONDS="3"
    )
    assert sink.wait(60) == 1
    assert f"no broker answers at IOT_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}" in sink.log_tail(200)


def test_kafka_secrets_never_reach_the_log(pipeline: Pipeline) -> None:
    secret = f"sasl-{uuid.uuid4().hex}"
    extra = f'{{"sasl.username": "iot", "sasl.password": "{secret}"}}'
    sink = pipeline.start("sink", IOT_KAFKA_EXTRA_CONFIG=extra)
    wait_for("the start-up line", lambda: "starting iot-sink" in sink.log_tail(200), 60, pipeline.alive)
    wait_for("the sink to join", lambda: "joining group" in sink.log_tail(200), 60, pipeline.alive)
    assert sink.stop() == 0
    log = sink.log_path.read_text()
    start_line = next(line for line in log.splitlines() if "starting iot-sink" in line)
    assert "'sasl.password': '**********'" in start_line
    assert secret not in log
