"""The pipeline on a three-node CouchDB cluster (n = 3, the local stack's IOT_LOCAL_COUCHDB_NODES=3):
the node the sink writes to is killed while images flow, and nothing is lost; and what a cluster
can leave behind after such trouble, conflicting revisions of a document, is merged by the sink."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from iot_shared.schema import PredictionMessage
from iot_sink.documents import group_by_id, is_complete, merge
from testbed.harness import Pipeline, Stack, random_images
from testbed.ports import free_port
from testbed.private_stack import PrivateCouch, private_couch
from testbed.waiting import wait_for

IMAGES = 400
RATE = "40"  # images per second: the producer sends for 10 s


@pytest.fixture
def cluster(stack: Stack, tmp_path: Path) -> Iterator[PrivateCouch]:
    with private_couch(stack, tmp_path / "cluster", nodes=3) as couch:
        yield couch


def test_the_cluster_keeps_three_copies_of_img_db(cluster: PrivateCouch) -> None:
    info = cluster.stack.couch("GET", "img_db").json()
    assert info["cluster"]["n"] == 3
    shards = cluster.stack.couch("GET", "img_db/_shards").json()["shards"]
    assert all(len(nodes) == 3 for nodes in shards.values())


def test_a_couchdb_node_killed_while_images_flow_loses_nothing(
    cluster: PrivateCouch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first, second, _ = cluster.stack.couchdb_nodes
    pipeline = Pipeline(cluster.stack, tmp_path_factory.mktemp("logs"))
    pipeline.prepare()
    try:
        pipeline.start("inference")
        sink = pipeline.start("sink")
        producer = pipeline.start("producer", IOT_COUNT=str(IMAGES), IOT_RATE=RATE)
        stored = wait_for(
            "the first images stored",
            lambda: n if (n := len(pipeline.complete_documents())) >= IMAGES // 10 else None,
            120,
            pipeline.alive,
        )
        # The sink writes to the first node it was given: kill it, with no clean shutdown.
        cluster.kill("couchdb")
        assert stored < IMAGES, "the node went down after every image was stored: nothing was proven"
        assert producer.wait(120) == 0, producer.log_tail()
        # The test reads through a live node too.
        pipeline.stack = dataclasses.replace(cluster.stack, couchdb_url=second)
        docs = pipeline.wait_for_complete(IMAGES, timeout=180)
        assert len({doc["_id"] for doc in docs}) == IMAGES
        pipeline.alive()
        assert f"CouchDB node {first} did not answer" in sink.log_path.read_text()

        report = pipeline.audit_report(IOT_COUCHDB_USER="iot_reader")
        assert report["lost"]["count"] == report["extra"]["count"] == 0, report
        assert report["complete"] == IMAGES

        # The node comes back and catches up: alone, it serves every document.
        cluster.start("couchdb")
        cluster.stop("couchdb2", "couchdb3")
        on_first = dataclasses.replace(cluster.stack, couchdb_url=first)
        wait_for(
            "the restarted node, alone, holding every document",
            lambda: sum(is_complete(row["doc"]) for row in _all_docs(on_first, pipeline.db)) == IMAGES,
            120,
        )
    finally:
        pipeline.close()


def _all_docs(stack: Stack, db: str) -> list[dict[str, Any]]:
    """Every row of DB, with one copy enough (r=1): the only node up answers alone."""
    response = stack.couch("GET", f"{db}/_all_docs", params={"include_docs": "true", "r": "1"})
    if response.status_code != 200:
        return []
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


def test_conflicting_revisions_of_a_document_are_merged_by_the_sink(pipeline: Pipeline) -> None:
    """Two revisions of one new document, each with one half, as two sinks writing through nodes
    cut off from each other leave it once the nodes meet again (put in as replication does,
    `new_edits: false`, which one server takes as well as a cluster)."""
    [image] = random_images(1)
    prediction = PredictionMessage(image.id, "cat", 0.9, time.time())
    halves = [
        dict(half, _rev=rev)
        for message, rev in ((image, "1-" + "a" * 32), (prediction, "1-" + "b" * 32))
        if (half := merge(None, group_by_id([message])[image.id], time.time())) is not None
    ]
    written = pipeline.stack.couch(
        "POST", f"{pipeline.db}/_bulk_docs", json={"docs": halves, "new_edits": False}
    )
    assert written.status_code == 201, written.text
    before = pipeline.stack.couch("GET", f"{pipeline.db}/{image.id}", params={"conflicts": "true"}).json()
    assert len(before["_conflicts"]) == 1 and not is_complete(before)

    port = free_port()
    pipeline.start("sink", IOT_CONFLICT_SWEEP_SECONDS="1", IOT_METRICS_PORT=str(port))

    def merged() -> dict[str, Any] | None:
        doc: dict[str, Any] = pipeline.stack.couch(
            "GET", f"{pipeline.db}/{image.id}", params={"conflicts": "true"}
        ).json()
        return doc if is_complete(doc) and "_conflicts" not in doc else None

    doc = wait_for("the sink merging the two revisions", merged, 60, pipeline.alive)
    assert (doc["GroundTruth"], doc["InferredValue"]) == ("cat", "cat")
    assert doc["_rev"].startswith("2-")
    leaves = pipeline.stack.couch(
        "GET",
        f"{pipeline.db}/{image.id}",
        params={"open_revs": "all"},
        headers={"Accept": "application/json"},
    ).json()
    assert sorted("_deleted" in leaf["ok"] for leaf in leaves) == [False, True], "the loser is deleted"
    metrics = {
        s.name: s.value
        for family in text_string_to_metric_families(
            requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        )
        for s in family.samples
    }
    assert metrics["iot_sink_revisions_merged_total"] == 1
    assert metrics["iot_sink_documents_completed_total"] == 1
