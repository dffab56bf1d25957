from __future__ import annotations

import base64
import itertools
import uuid

import numpy as np

from iot_shared.schema import ImageMessage, PredictionMessage
from iot_shared.wire_fields import ATTACHMENT
from iot_sink.documents import group_by_id, is_complete, merge, merge_revisions

ID = str(uuid.uuid4())
PIXELS = np.zeros((32, 32, 3), dtype=np.uint8)
IMAGE = ImageMessage.from_pixels(ID, "cat", PIXELS, 100.0, "cam")
PREDICTION = PredictionMessage(ID, "dog", 0.75, 101.0)


def stored(doc: dict) -> dict:
    """What CouchDB gives back: a revision, and attachments as stubs."""
    doc = dict(doc, _rev="1-abc")
    if "_attachments" in doc:
        doc["_attachments"] = {
            name: {"content_type": "image/png", "stub": True} for name in doc["_attachments"]
        }
    return doc


def apply_in_order(messages: list) -> dict:
    doc = None
    for message in messages:
        new = merge(doc, group_by_id([message])[ID], stored_at=200.0)
        doc = stored(new) if new is not None else doc
    assert doc is not None
    return doc


def test_any_order_and_any_duplicates_give_the_same_complete_document() -> None:
    results = []
    for order in itertools.permutations([IMAGE, PREDICTION, IMAGE, PREDICTION]):
        doc = apply_in_order(list(order))
        assert is_complete(doc)
        results.append({k: v for k, v in doc.items() if k != "_rev"})
    assert all(r == results[0] for r in results)
    assert results[0]["GroundTruth"] == "cat" and results[0]["InferredValue"] == "dog"
    assert results[0]["Confidence"] == 0.75 and results[0]["ProducedAt"] == 100.0


def test_a_replay_writes_nothing() -> None:
    doc = apply_in_order([IMAGE, PREDICTION])
    assert merge(doc, group_by_id([IMAGE])[ID], stored_at=300.0) is None
    assert merge(doc, group_by_id([PREDICTION])[ID], stored_at=300.0) is None


def test_prediction_first_keeps_its_fields_when_the_image_arrives() -> None:
    first = merge(None, group_by_id([PREDICTION])[ID], stored_at=1.0)
    assert first is not None and not is_complete(first)
    second = merge(stored(first), group_by_id([IMAGE])[ID], stored_at=2.0)
    assert second is not None and second["InferredValue"] == "dog" and second["_rev"] == "1-abc"
    assert base64.b64decode(second["_attachments"][ATTACHMENT]["data"]) == IMAGE.png


def test_existing_attachment_is_kept_as_a_stub_not_resent() -> None:
    doc = apply_in_order([IMAGE])
    new = merge(doc, group_by_id([PREDICTION])[ID], stored_at=3.0)
    assert new is not None and new["_attachments"][ATTACHMENT] == {"content_type": "image/png", "stub": True}


def test_one_batch_with_both_messages_makes_one_update() -> None:
    updates = group_by_id([PREDICTION, IMAGE, IMAGE])
    assert list(updates) == [ID]
    doc = merge(None, updates[ID], stored_at=5.0)
    assert doc is not None and is_complete(doc) and doc["StoredAt"] == 5.0


# --- first writer wins, field by field ----------------------------------------------------

REPLAYED_IMAGE = ImageMessage.from_pixels(ID, "cat", PIXELS + 1, 150.0, "another-cam")
REPLAYED_PREDICTION = PredictionMessage(ID, "frog", 0.5, 999.0)


def test_a_replay_with_new_values_writes_no_revision() -> None:
    doc = apply_in_order([IMAGE, PREDICTION])
    assert merge(doc, group_by_id([REPLAYED_PREDICTION])[ID], stored_at=300.0) is None
    assert merge(doc, group_by_id([REPLAYED_IMAGE])[ID], stored_at=300.0) is None
    assert merge(doc, group_by_id([REPLAYED_IMAGE, REPLAYED_PREDICTION])[ID], stored_at=300.0) is None


def test_a_field_already_stored_is_never_overwritten() -> None:
    image_only = apply_in_order([IMAGE])
    # The update brings a new prediction (written) and a changed image (ignored).
    new = merge(image_only, group_by_id([REPLAYED_IMAGE, PREDICTION])[ID], stored_at=400.0)
    assert new is not None
    assert (new["Source"], new["ProducedAt"], new["GroundTruth"]) == ("cam", 100.0, "cat")
    assert new["InferredValue"] == "dog" and new["StoredAt"] == 400.0
    assert new["_attachments"][ATTACHMENT] == {"content_type": "image/png", "stub": True}


def test_the_first_message_of_a_batch_wins_too() -> None:
    update = group_by_id([PREDICTION, REPLAYED_PREDICTION, IMAGE, REPLAYED_IMAGE])[ID]
    assert update.fields["InferredAt"] == 101.0 and update.fields["Source"] == "cam"
    assert update.png == IMAGE.png


def test_whichever_version_comes_first_is_the_one_kept() -> None:
    first = apply_in_order([REPLAYED_PREDICTION, IMAGE, PREDICTION, REPLAYED_IMAGE])
    assert (first["InferredValue"], first["InferredAt"], first["Source"]) == ("frog", 999.0, "cam")


def revision(*messages: ImageMessage | PredictionMessage, rev: str) -> dict:
    """One revision of the document as a writer made it alone, read back with its attachment's data."""
    doc = merge(None, group_by_id(messages)[ID], 200.0)
    assert doc is not None
    return dict(doc, _rev=rev)


def test_conflicting_halves_merge_into_the_whole_document() -> None:
    image, prediction = revision(IMAGE, rev="1-a"), revision(PREDICTION, rev="1-b")
    winner = dict(stored(prediction), _rev="1-b", _conflicts=["1-a"])
    merged = merge_revisions(winner, [image], 300.0)
    assert merged is not None and is_complete(merged)
    assert merged["_rev"] == "1-b" and "_conflicts" not in merged  # written on top of the winner
    assert merged["_attachments"][ATTACHMENT]["data"] == image["_attachments"][ATTACHMENT]["data"]
    assert (merged["GroundTruth"], merged["InferredValue"], merged["StoredAt"]) == ("cat", "dog", 300.0)


def test_the_winning_revision_keeps_its_fields_and_one_with_nothing_new_adds_nothing() -> None:
    winner = stored(revision(IMAGE, PREDICTION, rev="2-w"))
    other = revision(PredictionMessage(ID, "truck", 0.9, 150.0), rev="1-o")
    assert merge_revisions(winner, [other], 300.0) is None
