"""What the sink asks of CouchDB: one request per batch, and never a blind overwrite."""

from __future__ import annotations

from prometheus_client import REGISTRY

from iot_shared.schema import PredictionMessage
from iot_sink.store import DocumentStore
from tests.unit.sink.fakes import FakeCouch
from tests.unit.sink.test_quality_metrics import image, write


def test_a_new_document_and_its_completion_cost_one_request_each_and_no_read() -> None:
    couch = FakeCouch()
    store = DocumentStore(couch, "db")  # type: ignore[arg-type]
    cat = image("cat")
    assert write(store, cat) == 1
    assert write(store, PredictionMessage(cat.id, "dog", 0.7, 2.0)) == 1
    assert couch.requests == ["bulk_docs", "bulk_docs"]
    assert couch.docs[cat.id]["InferredValue"] == "dog"


def test_a_replay_after_a_restart_is_merged_into_the_stored_document_not_written_over_it() -> None:
    couch = FakeCouch()
    cat = image("cat")
    write(DocumentStore(couch, "db"), cat, PredictionMessage(cat.id, "dog", 0.7, 2.0))  # type: ignore[arg-type]
    stored = dict(couch.docs[cat.id])
    conflicts = REGISTRY.get_sample_value("iot_sink_conflicts_resolved_total") or 0.0

    restarted = DocumentStore(couch, "db")  # type: ignore[arg-type]  # remembers nothing
    couch.requests.clear()
    replayed = PredictionMessage(cat.id, "cat", 0.9, 3.0)
    assert write(restarted, replayed) == 0  # written as new, refused, read: nothing to add
    assert couch.requests == ["bulk_docs", "all_docs"]
    assert couch.docs[cat.id] == stored  # first writer wins
    # An existing document met as if new is no revision conflict between writers.
    assert REGISTRY.get_sample_value("iot_sink_conflicts_resolved_total") == conflicts
