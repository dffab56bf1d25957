"""The live model score: each image is scored once, when its document first becomes complete."""

from __future__ import annotations

import uuid

import numpy as np
from prometheus_client import REGISTRY

from iot_shared.schema import CLASSES, ImageMessage, PredictionMessage
from iot_sink.documents import group_by_id
from iot_sink.store import DocumentStore
from tests.unit.sink.fakes import FakeCouch


def scored(truth: str, predicted: str) -> float:
    value = REGISTRY.get_sample_value(
        "iot_sink_predictions_scored_total", {"truth": truth, "predicted": predicted}
    )
    assert value is not None  # every cell is exported from the start
    return value


def confidence_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("iot_sink_prediction_confidence_count", {"outcome": outcome})
    assert value is not None
    return value


def image(truth: str) -> ImageMessage:
    return ImageMessage.from_pixels(str(uuid.uuid4()), truth, np.zeros((32, 32, 3), np.uint8), 1.0, "t")


def write(store: DocumentStore, *messages: ImageMessage | PredictionMessage) -> int:
    return store.write(group_by_id(messages))


def test_all_hundred_cells_and_both_outcomes_are_exported_from_the_start() -> None:
    assert all(scored(t, p) >= 0 for t in CLASSES for p in CLASSES)
    assert confidence_count("correct") >= 0 and confidence_count("wrong") >= 0


def test_an_image_is_scored_once_when_its_document_completes_never_on_a_replay() -> None:
    couch = FakeCouch()
    store = DocumentStore(couch, "db")  # type: ignore[arg-type]
    cat, horse = image("cat"), image("horse")
    before = (scored("cat", "dog"), scored("horse", "horse"), confidence_count("wrong"))

    write(store, cat)  # the image alone: not complete
    assert scored("cat", "dog") == before[0]
    write(
        store,
        PredictionMessage(cat.id, "dog", 0.7, 2.0),
        horse,
        PredictionMessage(horse.id, "horse", 0.99, 2.0),
    )
    assert (scored("cat", "dog"), scored("horse", "horse")) == (before[0] + 1, before[1] + 1)
    assert confidence_count("wrong") == before[2] + 1

    # Replays, another prediction for the same image, and a restarted sink with no memory of
    # what it wrote: first writer wins, no revision, nothing scored again.
    after = {(t, p): scored(t, p) for t in CLASSES for p in CLASSES}
    write(store, cat, PredictionMessage(cat.id, "cat", 0.9, 3.0))
    write(DocumentStore(couch, "db"), cat, horse, PredictionMessage(cat.id, "cat", 0.9, 3.0))  # type: ignore[arg-type]
    assert {(t, p): scored(t, p) for t in CLASSES for p in CLASSES} == after
    assert couch.docs[cat.id]["InferredValue"] == "dog"


def test_a_document_another_sink_completed_meanwhile_is_not_scored_again() -> None:
    couch = FakeCouch()
    ours, theirs = DocumentStore(couch, "db"), DocumentStore(couch, "db")  # type: ignore[arg-type]
    frog = image("frog")
    write(ours, frog)  # ours remembers the incomplete revision
    before = scored("frog", "frog")
    conflicts = REGISTRY.get_sample_value("iot_sink_conflicts_resolved_total")
    write(theirs, PredictionMessage(frog.id, "frog", 0.8, 2.0))  # the other sink completes it
    assert scored("frog", "frog") == before + 1
    # Ours completes it from stale memory: a conflict, re-read, nothing left to add.
    assert write(ours, PredictionMessage(frog.id, "frog", 0.8, 2.0)) == 0
    assert REGISTRY.get_sample_value("iot_sink_conflicts_resolved_total") == (conflicts or 0) + 1
    assert scored("frog", "frog") == before + 1
