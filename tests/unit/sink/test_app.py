from __future__ import annotations

import uuid

import numpy as np
import requests
from confluent_kafka import Message
from prometheus_client import REGISTRY

from iot_shared.consumer import GroupMember
from iot_shared.schema import ImageMessage, PredictionMessage
from iot_sink.app import pairs_complete, storage_loop
from iot_sink.documents import Update
from iot_sink.settings import SinkSettings
from iot_sink.store import WriteError
from tests.unit.shared.fakes import FakeConsumer, RecordingPublisher

SETTINGS = SinkSettings(images_topic="images", predictions_topic="preds", dlq_topic="dlq")


class FlakyStore:
    """Fails with the given errors first, then stores; keeps what it stored."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.stored: dict[str, Update] = {}

    def write(self, updates: dict[str, Update]) -> int:
        if self.failures:
            raise self.failures.pop(0)
        self.stored.update(updates)
        return len(updates)


def retries() -> float:
    return REGISTRY.get_sample_value("iot_sink_write_retries_total") or 0.0


def image(i: int) -> ImageMessage:
    pixels = np.full((32, 32, 3), i, np.uint8)
    return ImageMessage.from_pixels(str(uuid.UUID(int=i)), "cat", pixels, 1.0, "t")


def test_images_and_predictions_of_a_batch_are_merged_per_id_and_committed() -> None:
    images = [image(i) for i in range(3)]
    consumer = FakeConsumer(
        {
            ("images", 0): [m.encode() for m in images],
            ("preds", 0): [PredictionMessage(images[0].id, "dog", 0.5, 2.0).encode(), b"nope"],
        }
    )
    store, publisher = FlakyStore([]), RecordingPublisher()
    loop = storage_loop(SETTINGS, GroupMember(consumer, "sink"), publisher, store)  # type: ignore[arg-type]
    assert loop.step() is True
    assert sorted(store.stored) == sorted(m.id for m in images)
    assert store.stored[images[0].id].fields["InferredValue"] == "dog"
    assert [reason for reason, _, _ in publisher.dead_letters()] == ["not_json"]
    assert consumer.stored == {("images", 0): 3, ("preds", 0): 2}


def test_couchdb_trouble_holds_the_batch_back_and_counts_retries_until_it_is_stored() -> None:
    consumer = FakeConsumer({("images", 0): [image(i).encode() for i in range(4)]})
    errors: list[Exception] = [
        requests.ConnectionError("down"),
        requests.Timeout("slow"),
        WriteError("refused"),
    ]
    store, before = FlakyStore(errors), retries()
    loop = storage_loop(SETTINGS, GroupMember(consumer, "sink"), RecordingPublisher(), store)  # type: ignore[arg-type]
    loop.backoff = lambda: lambda: 0.0
    loop._next_delay = loop.backoff()
    assert [loop.step() for _ in range(4)] == [False, False, False, True]
    assert retries() == before + 3
    assert len(store.stored) == 4
    assert consumer.stored == {("images", 0): 4}


def test_a_batch_is_complete_when_each_image_has_its_prediction_and_back() -> None:
    complete = pairs_complete("images", "preds")

    def record(topic: str, key: str) -> Message:
        return Message(topic=topic, partition=0, offset=0, key=key.encode())

    assert not complete([record("images", "a")])
    assert not complete([record("preds", "a")])
    assert complete([record("images", "a"), record("preds", "a")])
    assert not complete([record("images", "a"), record("preds", "a"), record("images", "b")])
    assert complete(
        [record("preds", "b"), record("images", "a"), record("preds", "a"), record("images", "b")]
    )
