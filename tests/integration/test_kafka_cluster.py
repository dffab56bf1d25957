"""The pipeline on three brokers of the test's own (the local stack's IOT_LOCAL_KAFKA_BROKERS=3):
every topic gets three replicas and a write needs two of them; the broker that leads the images
topic is `kill -9`ed while images flow and nothing is lost, by the audit that trusts no broker;
a broker whose data is wiped copies it back from the others (in sync again means it holds
every record the leader does)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from testbed.chaos.driver import ClusterWatch
from testbed.harness import Pipeline, Stack
from testbed.private_stack import PrivateKafka, private_kafka
from testbed.waiting import wait_for

IMAGES = 600
RATE = "40"  # images per second: the producer sends for 15 s


@pytest.fixture(scope="module")
def cluster(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    with private_kafka(stack, tmp_path_factory.mktemp("kafka"), brokers=3) as kafka:
        yield kafka


@pytest.fixture
def on_cluster(cluster: PrivateKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    pipeline = Pipeline(cluster.stack, tmp_path_factory.mktemp("logs"))
    pipeline.prepare()
    try:
        yield pipeline
    finally:
        pipeline.close()


def admin(cluster: PrivateKafka) -> AdminClient:
    return AdminClient({"bootstrap.servers": cluster.stack.bootstrap})


def replicas_and_isr(cluster: PrivateKafka, topic: str) -> list[tuple[int, int]]:
    """Per partition of `topic`: how many replicas it has, and how many are in sync."""
    partitions = admin(cluster).list_topics(topic, timeout=30).topics[topic].partitions
    return [(len(p.replicas), len(p.isrs)) for _, p in sorted(partitions.items())]


def test_every_topic_keeps_three_copies_and_a_write_needs_two(
    on_cluster: Pipeline, cluster: PrivateKafka
) -> None:
    for topic in (on_cluster.images_topic, on_cluster.predictions_topic, on_cluster.dlq_topic):
        # A new topic's metadata reaches every broker a moment after its creation is acknowledged.
        wait_for(
            f"{topic}: 3 replicas in sync", lambda t=topic: set(replicas_and_isr(cluster, t)) == {(3, 3)}, 30
        )
    client = admin(cluster)  # kept: a future dies with its client
    [future] = client.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, on_cluster.images_topic)]
    ).values()
    assert future.result(timeout=30)["min.insync.replicas"].value == "2"
    # The consumer groups' offsets are as durable as the records.
    assert set(replicas_and_isr(cluster, "__consumer_offsets")) <= {(3, 3)}


def test_a_topic_with_fewer_replicas_is_reported_not_left(
    on_cluster: Pipeline, cluster: PrivateKafka
) -> None:
    thin = f"{on_cluster.name}-thin"
    client = admin(cluster)
    [future] = client.create_topics([NewTopic(thin, 1, 1)]).values()
    future.result(timeout=30)
    result = subprocess.run(
        [sys.executable, "-m", "iot_shared.topics"],
        env={**os.environ, **on_cluster.env(IOT_IMAGES_TOPIC=thin)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert f"{thin} (1 of 3)" in result.stderr and "kafka-reassign-partitions" in result.stderr


def test_the_leader_killed_while_images_flow_loses_nothing(
    on_cluster: Pipeline, cluster: PrivateKafka
) -> None:
    run_id = f"{on_cluster.name}-run"
    on_cluster.start("inference")
    on_cluster.start("sink")
    producer = on_cluster.start("producer", IOT_COUNT=str(IMAGES), IOT_RATE=RATE, IOT_RUN_ID=run_id)
    stored = wait_for(
        "the first images stored",
        lambda: n if (n := len(on_cluster.complete_documents())) >= IMAGES // 10 else None,
        120,
        on_cluster.alive,
    )
    victim = ClusterWatch(cluster.stack.bootstrap, on_cluster.images_topic, cluster.brokers).leader()
    cluster.kill(victim)
    try:
        assert stored < IMAGES, "the broker died after every image was stored: nothing was proven"
        assert producer.wait(300) == 0, producer.log_tail()
        on_cluster.wait_for_complete(IMAGES, timeout=300)
        on_cluster.alive()  # no service exited
    finally:
        cluster.start(victim)

    code, out, err = on_cluster.audit("--json", "--run-id", run_id, "--count", str(IMAGES))
    report = json.loads(out) if out else err
    assert code == 0, report
    assert (report["produced"], report["complete"], report["lost"]["count"]) == (IMAGES, IMAGES, 0)
    # Every copy is back once the broker is: the cluster is whole again.
    wait_for(
        "every replica in sync again",
        lambda: set(replicas_and_isr(cluster, on_cluster.images_topic)) == {(3, 3)},
        120,
    )


def test_a_broker_that_lost_its_data_copies_it_back(on_cluster: Pipeline, cluster: PrivateKafka) -> None:
    on_cluster.produce(60)
    victim = cluster.brokers[-1]
    with cluster.down(victim):
        shutil.rmtree(Path(cluster.run_dir) / f"{victim}-logs")
        assert {isr for _, isr in replicas_and_isr(cluster, on_cluster.images_topic)} == {2}
    wait_for(
        "the wiped broker back in sync",
        lambda: set(replicas_and_isr(cluster, on_cluster.images_topic)) == {(3, 3)},
        120,
    )
