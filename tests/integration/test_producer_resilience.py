"""The real producer against a broker that crashes, and a producer that crashes itself.

- A broker of the test's own (a PrivateStack) is `kill -9`ed and restarted while the producer
  sends at full speed: the producer rides it out and exits 0, every image in the topic.
- A producer killed mid-run and started again with the same state resumes the same run: the
  topic then holds exactly the IDs of one full run; a start after the finished run is a new run.

Images may be in the topic more than once (a message whose acknowledgement was lost is sent
again; a resumed run sends again what the crashed one had sent): the sink merges by ID.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from iot_producer.runs import RUN_ID_FILE
from iot_shared.kafka import ensure_topics
from iot_shared.run_plan import RunPlan
from iot_shared.settings import ServiceSettings
from testbed.harness import Pipeline, Service
from testbed.private_stack import PrivateStack, private_stack
from testbed.waiting import wait_for

log = logging.getLogger(__name__)

PARTITIONS = 3


class TopicSize:
    """Records in a topic (sum of the partitions' high watermarks), read while others write."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        # Quiet: it fails to connect while the broker is down, which is the point of the test.
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "topic-size", "log_level": 0})

    def __call__(self) -> int:
        return sum(
            self._consumer.get_watermark_offsets(TopicPartition(self._topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        )

    def once_known(self, timeout: float = 120) -> int:
        """The size, as soon as the broker knows the partitions again (after a restart)."""

        def probe() -> tuple[int] | None:
            try:
                return (self(),)
            except KafkaException:
                return None

        return wait_for(f"the partitions of {self._topic}", probe, timeout)[0]

    def close(self) -> None:
        self._consumer.close()


def keys_in_topic(pipeline: Pipeline) -> Counter[str]:
    size = TopicSize(pipeline.stack.bootstrap, pipeline.images_topic)
    try:
        total = size()
    finally:
        size.close()
    messages = pipeline.read_topic(pipeline.images_topic, total)
    assert len(messages) == total
    return Counter(m.key().decode() for m in messages)


def run_ids(run_id: str, count: int) -> set[str]:
    """The IDs of one full run of `count` test images in file order from index 0."""
    return set(RunPlan(count=count).image_ids(run_id))


def summary(producer: Service) -> str:
    found = re.findall(r"run \S+: sent \d+ of \d+ images, delivered \d+.*", producer.log_path.read_text())
    assert found, producer.log_tail()
    return found[-1]


def still_running(producer: Service) -> Callable[[], None]:
    def check() -> None:
        if not producer.running:
            raise AssertionError(f"the producer exited early:\n{producer.log_tail()}")

    return check


@pytest.fixture
def crashing_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    with private_stack(tmp_path_factory.mktemp("stack")) as stack:
        yield stack


def test_producer_rides_out_two_broker_crashes(
    crashing_broker: PrivateStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    count = 8000
    pipeline = Pipeline(crashing_broker.stack, tmp_path_factory.mktemp("logs"))
    pipeline.prepare(PARTITIONS)
    state = tmp_path_factory.mktemp("state")
    size = TopicSize(crashing_broker.stack.bootstrap, pipeline.images_topic)
    try:
        started = time.monotonic()
        producer = pipeline.start(
            "producer",
            IOT_COUNT=str(count),
            # Paced (about 50 s) so that both crashes surely come before the end of the run: at
            # full speed a quick broker restart let the run finish before the second crash.
            IOT_RATE="160",
            IOT_STATE_DIR=str(state),
            # Two broker restarts take a while on a loaded machine.
            IOT_FLUSH_TIMEOUT_SECONDS="300",
        )
        wait_for("the first images in the topic", lambda: size() > 0, 120, still_running(producer))
        run_id = (state / RUN_ID_FILE).read_text().strip()
        stored = []
        # As in the fault run: a crash, and another right after the broker came back.
        for _ in range(2):
            crashing_broker.kill("kafka")
            assert producer.running, f"the run ended before the crash:\n{producer.log_tail()}"
            crashing_broker.start()
            stored.append(size.once_known())  # what the broker had written before it was killed

        assert producer.wait(600) == 0, producer.log_tail()
        took = time.monotonic() - started
        text = producer.log_path.read_text()
        assert f"sent {count} of {count} images, delivered {count}" in summary(producer)
        assert "Traceback" not in text
        assert not (state / RUN_ID_FILE).exists()  # the run is finished

        keys = keys_in_topic(pipeline)
        assert set(keys) == run_ids(run_id, count)
        log.info(
            "broker crashes: %d images in %.0fs; in the topic after each restart: %s; finally %d "
            "records (%d duplicates); re-produced by the publisher: %s",
            count,
            took,
            stored,
            sum(keys.values()),
            sum(keys.values()) - len(keys),
            re.findall(r"producing (\d+) messages again", text) or "none",
        )
    finally:
        size.close()
        pipeline.close()


def test_a_producer_killed_mid_run_resumes_the_same_run_with_the_same_ids(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    count = 600
    state = tmp_path / "state"
    size = TopicSize(pipeline.stack.bootstrap, pipeline.images_topic)
    try:
        # Paced, so that the crash surely comes before the end of the run.
        first = pipeline.start("producer", IOT_COUNT=str(count), IOT_RATE="100", IOT_STATE_DIR=str(state))
        wait_for("the first images in the topic", lambda: size() >= 50, 120, still_running(first))
        first.kill()
        sent_before_crash = size()
        assert sent_before_crash < count
        run_id = (state / RUN_ID_FILE).read_text().strip()

        again = pipeline.start("producer", IOT_COUNT=str(count), IOT_RATE="0", IOT_STATE_DIR=str(state))
        assert again.wait(300) == 0, again.log_tail()
        assert f"resuming unfinished run {run_id}" in again.log_path.read_text()
        assert f"sent {count} of {count} images, delivered {count}" in summary(again)
        assert not (state / RUN_ID_FILE).exists()

        keys = keys_in_topic(pipeline)
        assert set(keys) == run_ids(run_id, count)
        log.info(
            "producer crash: %d sent before the kill, %d records for %d IDs after the restart",
            sent_before_crash,
            sum(keys.values()),
            len(keys),
        )

        # The run finished: the next start is a new run, with new IDs.
        pipeline.produce(3, IOT_STATE_DIR=str(state))
        new_keys = set(keys_in_topic(pipeline)) - set(keys)
        assert len(new_keys) == 3 and not new_keys & run_ids(run_id, count)
    finally:
        size.close()


def test_a_producer_started_before_its_topic_exists_waits_for_it(pipeline: Pipeline, tmp_path: Path) -> None:
    """librdkafka raises `_UNKNOWN_TOPIC` from produce() (as after the broker restart of the
    fault run): the publisher keeps the images and produces them again once the topic is there."""
    count = 300
    topic = f"{pipeline.images_topic}-late"
    producer = pipeline.start(
        "producer", IOT_COUNT=str(count), IOT_RATE="0", IOT_STATE_DIR=str(tmp_path), IOT_IMAGES_TOPIC=topic
    )
    wait_for(
        "the producer to find the topic missing",
        lambda: f"deliveries to {topic} failing" in producer.log_path.read_text(),
        120,
        still_running(producer),
    )
    run_id = (tmp_path / RUN_ID_FILE).read_text().strip()
    ensure_topics(ServiceSettings(kafka_bootstrap_servers=pipeline.stack.bootstrap), {topic: PARTITIONS})

    assert producer.wait(120) == 0, producer.log_tail()
    assert f"sent {count} of {count} images, delivered {count}" in summary(producer)
    late = Pipeline(pipeline.stack, pipeline.logs, name=pipeline.name)
    keys = Counter(m.key().decode() for m in late.read_topic(topic, count))
    assert set(keys) == run_ids(run_id, count)
