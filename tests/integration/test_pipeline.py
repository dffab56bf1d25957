"""The whole pipeline on the real broker and CouchDB: producer -> inference -> sink."""

from __future__ import annotations

import base64
import json
import re
import uuid

import numpy as np

from iot_shared.png import png_to_pixels
from iot_shared.schema import CLASSES, ImageMessage, PredictionMessage
from testbed.harness import Pipeline, wait_for
from testbed.paths import EXPECTED_ACCURACY
from testbed.ports import free_port
from tests.integration.test_observability import accuracy_of, document_cells, wait_for_scored


def test_300_images_at_full_speed_become_exactly_300_complete_documents(pipeline: Pipeline) -> None:
    pipeline.start("inference")
    pipeline.start("sink")
    pipeline.produce(300)
    docs = pipeline.wait_for_complete(300, timeout=300)
    assert len(pipeline.documents()) == 300
    for doc in docs:
        assert doc["GroundTruth"] in CLASSES and doc["InferredValue"] in CLASSES
        assert 0.0 < doc["Confidence"] <= 1.0
        assert doc["Model"] == "cifar10_resnet20"
        assert doc["ProducedAt"] <= doc["InferredAt"] <= doc["StoredAt"]
    # The attachment is the PNG itself, served as image/png.
    response = pipeline.stack.couch("GET", f"{pipeline.db}/{docs[0]['_id']}/image.png")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("image/png")
    assert png_to_pixels(response.content).shape == (32, 32, 3)


def current_assignment(log: str) -> set[str]:
    """The partitions a member holds now, from its log (rebalancing is incremental)."""
    held: set[str] = set()
    for event, partitions in re.findall(
        r"(?:INFO|WARNING) iot_shared.consumer: (assigned|revoked|lost) (.*)", log
    ):
        named = {p.split("@")[0] for p in partitions.split(", ")} - {"nothing"}
        held = held | named if event == "assigned" else held - named
    return held


def test_inference_scales_out_within_its_consumer_group(pipeline: Pipeline) -> None:
    members = [pipeline.start("inference"), pipeline.start("inference")]
    wait_for(
        "both inference members to hold partitions",
        lambda: all(current_assignment(m.log_path.read_text()) for m in members),
        120,
        pipeline.alive,
    )
    held = [current_assignment(m.log_path.read_text()) for m in members]
    # The 3 partitions of the images topic are split between the two, none held twice.
    assert not held[0] & held[1]
    assert held[0] | held[1] == {f"{pipeline.images_topic}[{p}]" for p in range(3)}
    pipeline.start("sink")
    pipeline.produce(300)
    docs = pipeline.wait_for_complete(300, timeout=300)
    assert len(pipeline.documents()) == 300 == len({d["_id"] for d in docs})


def test_whole_test_set_matches_the_reference_model(pipeline: Pipeline, test_set, reference_model) -> None:
    pipeline.start("inference", IOT_MAX_BATCH="256")
    sink_port = free_port()
    pipeline.start("sink", IOT_METRICS_PORT=str(sink_port))
    pipeline.produce(0)  # 0 = the whole split: all 10,000 test images
    pipeline.wait_for_complete(len(test_set), timeout=900)
    docs = pipeline.documents(attachments=True)
    assert len(docs) == len(test_set)

    # Classify the stored pixels themselves with the independent reference forward pass.
    pixels = np.stack([png_to_pixels(base64.b64decode(d["_attachments"]["image.png"]["data"])) for d in docs])
    reference = reference_model.top1(pixels)
    stored = np.array([CLASSES.index(d["InferredValue"]) for d in docs])
    truth = np.array([CLASSES.index(d["GroundTruth"]) for d in docs])
    assert (stored == reference).mean() >= 0.999
    accuracy = (stored == truth).mean()
    assert abs(accuracy - EXPECTED_ACCURACY) <= 0.001, f"accuracy from CouchDB {accuracy:.4f}"
    assert abs(accuracy - (reference == truth).mean()) <= 0.001
    # Every test image arrived once, with its own label (1,000 per class).
    assert np.bincount(truth, minlength=10).tolist() == [1000] * 10

    # The sink's live score is the same: its confusion matrix is CouchDB's, cell for cell, so the
    # accuracy from the counters is 81.05 % too and each row (ground truth) sums to 1,000.
    cells = wait_for_scored(sink_port, len(test_set))
    assert {cell: n for cell, n in cells.items() if n} == document_cells(docs)
    assert accuracy_of(cells) == accuracy
    assert [sum(cells[t, p] for p in CLASSES) for t in CLASSES] == [1000] * 10


def test_prediction_before_image_and_duplicates_make_one_correct_document(pipeline: Pipeline) -> None:
    pipeline.start("sink")
    image_id = str(uuid.uuid4())
    pixels = np.full((32, 32, 3), 7, dtype=np.uint8)
    image = ImageMessage.from_pixels(image_id, "horse", pixels, 1700000000.0, "test")
    prediction = PredictionMessage(image_id, "deer", 0.6, 1700000001.0)

    pipeline.send_raw(pipeline.predictions_topic, [prediction.encode()], key=image_id)
    wait_for(
        "the prediction alone to be stored",
        lambda: [d for d in pipeline.documents() if d.get("InferredValue") == "deer"],
        60,
        pipeline.alive,
    )
    pipeline.send_raw(pipeline.images_topic, [image.encode(), image.encode()], key=image_id)
    pipeline.send_raw(pipeline.predictions_topic, [prediction.encode()], key=image_id)
    [doc] = pipeline.wait_for_complete(1, timeout=60)
    # A sentinel after the duplicates proves they were all consumed before we look again.
    sentinel = ImageMessage.from_pixels(str(uuid.uuid4()), "cat", pixels, 1.0, "test")
    pipeline.send_raw(pipeline.images_topic, [sentinel.encode()], key=sentinel.id)
    wait_for("the sentinel", lambda: len(pipeline.documents()) == 2, 60, pipeline.alive)

    [doc] = [d for d in pipeline.documents() if d["_id"] == image_id]
    assert (doc["GroundTruth"], doc["InferredValue"], doc["Confidence"]) == ("horse", "deer", 0.6)
    response = pipeline.stack.couch("GET", f"{pipeline.db}/{image_id}/image.png")
    assert response.content == image.png


def test_sink_killed_mid_stream_loses_and_doubles_nothing(pipeline: Pipeline) -> None:
    pipeline.start("inference")
    # A short session timeout lets the group notice the dead member quickly (default 45 s).
    fast = {"IOT_MAX_BATCH": "20", "IOT_KAFKA_EXTRA_CONFIG": json.dumps({"session.timeout.ms": "6000"})}
    sink = pipeline.start("sink", **fast)
    producer = pipeline.start("producer", IOT_COUNT="300", IOT_RATE="100")
    wait_for("the first documents", lambda: len(pipeline.documents()) >= 30, 120, pipeline.alive)
    sink.kill()  # a crash: no flush, no commit
    assert producer.wait(120) == 0
    pipeline.start("sink", **fast)
    docs = pipeline.wait_for_complete(300, timeout=300)
    assert len(pipeline.documents()) == 300
    assert len({d["_id"] for d in docs}) == 300


def test_sink_stopped_gracefully_and_restarted_resumes_where_it_left(pipeline: Pipeline) -> None:
    pipeline.start("inference")
    sink = pipeline.start("sink")
    pipeline.produce(100)
    pipeline.wait_for_complete(100, timeout=120)
    assert sink.stop() == 0  # SIGTERM, as `docker stop` sends
    pipeline.produce(50)
    pipeline.start("sink")
    pipeline.wait_for_complete(150, timeout=120)
    assert len(pipeline.documents()) == 150
