"""The sink against CouchDB trouble: revision conflicts, and the server going away mid-stream."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client import REGISTRY
from pydantic import SecretStr

from iot_shared.couch import ensure_database, make_client
from iot_shared.schema import ImageMessage, PredictionMessage
from iot_shared.settings import CouchSettings
from iot_sink.documents import group_by_id
from iot_sink.store import DocumentStore
from testbed import private_stack
from testbed.harness import Pipeline, Stack, random_images, wait_for
from testbed.ports import free_port
from testbed.private_stack import PrivateCouch


def test_conflicting_writer_is_merged_not_overwritten(stack: Stack) -> None:
    db = f"img_db_conflict_{uuid.uuid4().hex[:8]}"
    settings = CouchSettings(
        couchdb_url=stack.couchdb_url,
        couchdb_user=stack.couchdb_user,
        couchdb_password=SecretStr(stack.couchdb_password),
        couchdb_db=db,
    )
    client = make_client(settings)
    ensure_database(client, db)
    try:
        image_id = str(uuid.uuid4())
        image = ImageMessage.from_pixels(image_id, "bird", np.ones((32, 32, 3), np.uint8), 5.0, "t")
        store = DocumentStore(client, db)
        store.write(group_by_id([image]))
        stale = stack.couch("GET", f"{db}/{image_id}").json()

        # Another writer (a second sink instance) adds the prediction in between.
        other = dict(stale, InferredValue="airplane", Confidence=0.9, Model="m", InferredAt=6.0)
        assert stack.couch("PUT", f"{db}/{image_id}", json=other).status_code == 201

        # This sink still remembers the revision it wrote (now stale) and has a replayed image and
        # another prediction: its write conflicts, and merging again with the other writer's
        # revision, read afresh, adds nothing.
        before = REGISTRY.get_sample_value("iot_sink_conflicts_resolved_total") or 0.0
        replayed = ImageMessage(image_id, "bird", image.png, 7.0, "replayed-source", image.pixels)
        late = PredictionMessage(image_id, "bird", 0.4, 8.0)
        assert store.write(group_by_id([replayed, late])) == 0

        doc = stack.couch("GET", f"{db}/{image_id}").json()
        assert REGISTRY.get_sample_value("iot_sink_conflicts_resolved_total") == before + 1
        # First writer wins, field by field.
        assert (doc["Source"], doc["ProducedAt"]) == ("t", 5.0)
        assert (doc["InferredValue"], doc["Confidence"], doc["InferredAt"]) == ("airplane", 0.9, 6.0)
        assert doc["_rev"].startswith("2-")
    finally:
        stack.couch("DELETE", db)


@pytest.fixture
def private_couch(stack: Stack, tmp_path: Path) -> Iterator[PrivateCouch]:
    with private_stack.private_couch(stack, tmp_path) as couch:
        yield couch


def test_sink_rides_out_a_couchdb_outage_longer_than_its_poll_interval_without_losing_anything(
    private_couch: PrivateCouch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pipeline = Pipeline(private_couch.stack, tmp_path_factory.mktemp("logs"))
    pipeline.prepare()
    try:
        # A member that stops polling for 6 s leaves its group; the outage below lasts longer.
        pipeline.start(
            "sink",
            IOT_METRICS_PORT=str(metrics_port := free_port()),
            IOT_MAX_POLL_INTERVAL_MS="6000",
            IOT_SESSION_TIMEOUT_MS="6000",
        )
        first = random_images(20)
        pipeline.send_raw(pipeline.images_topic, [m.encode() for m in first])
        wait_for("the first documents", lambda: len(pipeline.documents()) == 20, 60, pipeline.alive)

        private_couch.stop()
        second = random_images(30)
        pipeline.send_raw(pipeline.images_topic, [m.encode() for m in second])
        pipeline.send_raw(
            pipeline.predictions_topic,
            [PredictionMessage(m.id, "cat", 0.5, 7.0).encode() for m in first + second],
        )
        # Back-offs of 0.5 + 1 + 2 + 4 s: the fifth retry comes after more than 6 s of outage.
        wait_for(
            "write retries",
            lambda: _metric(metrics_port, "iot_sink_write_retries_total") >= 5,
            60,
            pipeline.alive,
        )
        assert _metric(metrics_port, 'iot_consumer_paused{service="sink"}') == 1

        private_couch.start()
        docs = pipeline.wait_for_complete(50, timeout=120)
        assert len(pipeline.documents()) == 50
        assert {d["_id"] for d in docs} == {m.id for m in first + second}
        # It held its partitions throughout: never revoked, never lost to the group.
        for event in ("revoke", "lost"):
            assert (
                _metric(metrics_port, f'iot_consumer_rebalances_total{{service="sink",event="{event}"}}') == 0
            )
    finally:
        pipeline.close()


def _metric(port: int, series: str) -> float:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.RequestException:
        return 0.0
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


def test_wrong_couchdb_password_stops_the_sink_at_once_with_a_clear_message(pipeline: Pipeline) -> None:
    sink = pipeline.start("sink", IOT_COUCHDB_PASSWORD="not-the-password")
    assert sink.wait(60) == 1
    assert "refused IOT_COUCHDB_USER 'iot_sink' / IOT_COUCHDB_PASSWORD (401)" in sink.log_tail()
    assert "not-the-password" not in sink.log_path.read_text()
