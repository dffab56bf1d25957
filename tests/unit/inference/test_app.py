from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Message
from prometheus_client import REGISTRY

from iot_inference.app import classify_batch
from iot_inference.classifier import Classifier
from iot_inference.model import load_resnet20
from iot_shared.dead_letters import DeadLetters
from iot_shared.schema import ImageMessage


class RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, bytes]]] = []

    def send(self, topic: str, value: bytes, key: str | None = None, headers: list | None = None) -> None:
        self.sent.append((topic, value, dict(headers or [])))


def record(value: bytes | None, offset: int) -> Message:
    return Message(topic="iot-topic", partition=1, offset=offset, value=value)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_batch_is_classified_and_bad_records_are_dead_lettered(weights_path: Path, test_set) -> None:
    publisher = RecordingPublisher()
    dead_letters = DeadLetters(publisher, "iot-dlq", "inference")  # type: ignore[arg-type]
    good = [
        ImageMessage.from_pixels(str(uuid.uuid4()), test_set.class_name(i), test_set.images[i], 1.0, "t")
        for i in range(8)
    ]
    records = [record(m.encode(), i) for i, m in enumerate(good)] + [record(b"{oops", 8), record(None, 9)]
    before_dlq = counter("iot_dlq_messages_total", service="inference", reason="not_json")
    before_batches = counter("iot_inference_batch_size_images_count")

    predictions = classify_batch(records, Classifier(load_resnet20(weights_path)), dead_letters)

    assert [p.id for p in predictions] == [m.id for m in good]
    assert all(p.inferred_at >= 1.0 and 0 < p.confidence <= 1 for p in predictions)
    # The same images through the model directly give the same answers.
    direct = Classifier(load_resnet20(weights_path)).predict([m.pixels for m in good])
    assert [p.inferred_value for p in predictions] == [d.label for d in direct]
    assert counter("iot_dlq_messages_total", service="inference", reason="not_json") == before_dlq + 2
    assert counter("iot_inference_batch_size_images_count") == before_batches + 1  # one forward pass
    assert [(t, h["dlq.source.offset"]) for t, _, h in publisher.sent] == [
        ("iot-dlq", b"8"),
        ("iot-dlq", b"9"),
    ]
    assert publisher.sent[0][1] == b"{oops"


def test_a_batch_of_only_bad_records_runs_no_forward_pass(weights_path: Path) -> None:
    publisher = RecordingPublisher()
    dead_letters = DeadLetters(publisher, "iot-dlq", "inference")  # type: ignore[arg-type]
    before = counter("iot_inference_batch_size_images_count")
    assert classify_batch([record(b"[]", 0)], Classifier(load_resnet20(weights_path)), dead_letters) == []
    assert counter("iot_inference_batch_size_images_count") == before
    assert np.array_equal([h["dlq.reason"] for _, _, h in publisher.sent], [b"not_json"])
