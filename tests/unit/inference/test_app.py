from __future__ import annotations

import uuid
from pathlib import Path

from prometheus_client import REGISTRY

from iot_inference.app import classification_loop
from iot_inference.classifier import Classifier
from iot_inference.model import load_resnet20
from iot_inference.settings import InferenceSettings
from iot_shared.consumer import GroupMember
from iot_shared.schema import ImageMessage, PredictionMessage
from tests.unit.shared.fakes import FakeConsumer, RecordingPublisher

SETTINGS = InferenceSettings(predictions_topic="preds", dlq_topic="dlq", max_batch=64)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_batch_is_classified_published_and_committed_and_bad_records_are_dead_lettered(
    weights_path: Path, test_set
) -> None:
    good = [
        ImageMessage.from_pixels(str(uuid.uuid4()), test_set.class_name(i), test_set.images[i], 1.0, "t")
        for i in range(8)
    ]
    consumer = FakeConsumer({("iot-topic", 1): [m.encode() for m in good] + [b"{oops", None]})
    publisher = RecordingPublisher()
    classifier = Classifier(load_resnet20(weights_path))
    loop = classification_loop(SETTINGS, GroupMember(consumer, "inference"), publisher, classifier)  # type: ignore[arg-type]
    before_dlq = counter("iot_dlq_messages_total", service="inference", reason="not_json")
    before_batches = counter("iot_inference_batch_size_images_count")

    assert loop.step() is True

    predictions = [PredictionMessage.decode(v) for topic, v, _, _ in publisher.sent if topic == "preds"]
    assert [p.id for p in predictions] == [m.id for m in good]
    assert [key for topic, _, key, _ in publisher.sent if topic == "preds"] == [m.id for m in good]
    # The same images through the model directly give the same answers.
    direct = classifier.predict([m.pixels for m in good])
    assert [p.inferred_value for p in predictions] == [d.label for d in direct]
    assert counter("iot_inference_batch_size_images_count") == before_batches + 1  # one forward pass
    assert counter("iot_dlq_messages_total", service="inference", reason="not_json") == before_dlq + 2
    assert [(value, h["dlq.source.offset"]) for _, value, h in publisher.dead_letters() if h] == [
        (b"{oops", b"8"),
        (b"", b"9"),
    ]
    assert consumer.stored == {("iot-topic", 1): 10}


def test_a_batch_of_only_bad_records_runs_no_forward_pass_and_is_committed(weights_path: Path) -> None:
    consumer = FakeConsumer({("iot-topic", 0): [b"[]"]})
    publisher = RecordingPublisher()
    loop = classification_loop(
        SETTINGS,
        GroupMember(consumer, "inference"),
        publisher,
        Classifier(load_resnet20(weights_path)),  # type: ignore[arg-type]
    )
    before = counter("iot_inference_batch_size_images_count")
    assert loop.step() is True
    assert counter("iot_inference_batch_size_images_count") == before
    assert [reason for reason, _, _ in publisher.dead_letters()] == ["not_json"]
    assert consumer.stored == {("iot-topic", 0): 1}
