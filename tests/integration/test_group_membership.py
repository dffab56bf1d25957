"""Consumer group behaviour on the real broker: holding back without losing a record, static
membership after a crash, a clear exit when the broker is unreachable, and secrets kept out of logs."""

from __future__ import annotations

import uuid

from iot_shared.consumer import join_group
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
        member.hold_back(first)  # as after a failed write: everything paused, the batch rewound
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
