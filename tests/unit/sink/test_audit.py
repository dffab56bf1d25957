"""The delivery audit's judgement, on records and documents made up in memory (no network)."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from iot_shared.run_plan import RunPlan
from iot_shared.schema import ImageMessage, PredictionMessage
from iot_shared.settings import load_settings
from iot_sink import audit
from iot_sink.audit import AuditSettings, Ledger, RecordRef, render_table

IMAGES, PREDICTIONS, DLQ = "iot-topic", "iot-predictions", "iot-dlq"
PIXELS = np.zeros((32, 32, 3), np.uint8)


class Feed:
    """Records on the two topics, with the offsets a broker would give them, and a ledger."""

    def __init__(self, since: float | None = None) -> None:
        self.ledger = Ledger(IMAGES, PREDICTIONS, since)
        self.offsets = {IMAGES: 0, PREDICTIONS: 0}

    def record(self, topic: str, value: bytes | None) -> RecordRef:
        ref = RecordRef(topic, 0, self.offsets[topic])
        self.offsets[topic] += 1
        self.ledger.add_record(ref, value)
        return ref

    def image(self, label: str = "cat", image_id: str | None = None, produced_at: float = 100.0) -> str:
        msg = ImageMessage.from_pixels(image_id or str(uuid.uuid4()), label, PIXELS, produced_at, "t")
        self.record(IMAGES, msg.encode())
        return msg.id

    def prediction(self, image_id: str) -> None:
        self.record(PREDICTIONS, PredictionMessage(image_id, "dog", 0.5, 101.0).encode())

    def dead_letter(self, ref: RecordRef, service: str, reason: str) -> None:
        self.ledger.add_dead_letter(
            {
                "dlq.reason": reason,
                "dlq.service": service,
                "dlq.source.topic": ref.topic,
                "dlq.source.partition": str(ref.partition),
                "dlq.source.offset": str(ref.offset),
            }
        )


def document(image_id: str, label: str | None = "cat", prediction: bool = True, image: bool = True) -> dict:
    doc: dict[str, Any] = {"_id": image_id, "_rev": "1-x", "ProducedAt": 100.0}
    if label is not None:
        doc["GroundTruth"] = label
    if prediction:
        doc.update(InferredValue="dog", Confidence=0.5, InferredAt=101.0)
    if image:
        doc["_attachments"] = {"image.png": {"content_type": "image/png", "stub": True, "length": 70}}
    return doc


def test_every_image_stored_complete_once_is_ok() -> None:
    feed = Feed()
    ids = [feed.image() for _ in range(5)]
    for image_id in ids:
        feed.prediction(image_id)
        feed.ledger.add_document(document(image_id))
    feed.ledger.add_document({"_id": "_design/views", "views": {}})
    report = feed.ledger.report("img_db")
    assert (report.produced, report.image_records, report.predicted, report.documents) == (5, 5, 5, 5)
    assert report.complete == 5
    assert report.ok and report.problems == {}


def test_a_document_never_stored_is_lost_by_id() -> None:
    feed = Feed()
    ids = [feed.image() for _ in range(3)]
    for image_id in ids[1:]:
        feed.ledger.add_document(document(image_id))
    report = feed.ledger.report("img_db")
    assert report.lost.count == 1 and report.lost.ids == [ids[0]]
    assert report.complete == 2
    assert report.problems == {"lost": 1}


def test_incomplete_extra_and_mismatched_documents_are_each_named() -> None:
    feed = Feed()
    no_prediction, no_image, wrong_label, ok = (feed.image() for _ in range(4))
    stranger = str(uuid.uuid4())
    for doc in (
        document(no_prediction, prediction=False),
        document(no_image, label=None, image=False),
        document(wrong_label, label="truck"),
        document(ok),
        document(stranger),
    ):
        feed.ledger.add_document(doc)
    report = feed.ledger.report("img_db")
    assert report.missing_prediction.ids == [no_prediction]
    assert report.missing_image.ids == [no_image]
    assert report.ground_truth_mismatch.ids == [wrong_label]
    assert report.extra.ids == [stranger]
    assert report.lost.count == 0
    assert report.complete == 2  # the mismatched one is complete, just wrong
    assert report.problems == {
        "extra": 1,
        "ground_truth_mismatch": 1,
        "missing_prediction": 1,
        "missing_image": 1,
    }


def test_duplicates_and_orphan_predictions_are_counted_but_not_failures() -> None:
    feed = Feed()
    image_id = feed.image()
    feed.image(image_id=image_id)  # the producer re-sent it
    feed.prediction(image_id)
    feed.prediction(image_id)
    orphan = str(uuid.uuid4())
    feed.prediction(orphan)
    feed.ledger.add_document(document(image_id))
    report = feed.ledger.report("img_db")
    assert (report.produced, report.image_records) == (1, 2)
    assert report.duplicate_images.ids == [image_id]
    assert (report.predicted, report.prediction_records) == (2, 3)
    assert report.duplicate_predictions.ids == [image_id]
    assert report.orphan_predictions.ids == [orphan]
    assert report.ok


def test_the_latest_record_of_an_id_gives_its_ground_truth() -> None:
    feed = Feed()
    image_id = feed.image("cat")
    feed.image("dog", image_id=image_id)
    feed.ledger.add_document(document(image_id, label="dog"))
    assert feed.ledger.report("img_db").ground_truth_mismatch.count == 0


def test_bad_records_must_be_dead_lettered_by_every_service_that_reads_the_topic() -> None:
    feed = Feed()
    by_both = feed.record(IMAGES, b"not json")
    by_sink_only = feed.record(IMAGES, b"")
    other_reason = feed.record(IMAGES, b"[1]")
    unsure = json.loads(PredictionMessage(str(uuid.uuid4()), "cat", 0.5, 1.0).encode()) | {
        "Confidence": "very"
    }
    bad_prediction = feed.record(PREDICTIONS, json.dumps(unsure).encode())
    for service in ("inference", "sink"):
        feed.dead_letter(by_both, service, "not_json")
        feed.dead_letter(other_reason, service, "too_large" if service == "sink" else "not_json")
    feed.dead_letter(by_sink_only, "sink", "not_json")
    feed.dead_letter(bad_prediction, "sink", "invalid_field")
    feed.ledger.add_dead_letter({"dlq.reason": "x"})  # no source headers: not ours, ignored

    report = feed.ledger.report("img_db")
    assert report.bad_records == {f"{IMAGES}: not_json": 3, f"{PREDICTIONS}: invalid_field": 1}
    assert [(r.offset, r.dead_lettered_by) for r in report.not_dead_lettered] == [(1, {"sink": "not_json"})]
    [differs] = report.dead_letter_reason_differs
    assert (differs.offset, differs.reason, differs.dead_lettered_by) == (
        2,
        "not_json",
        {"inference": "not_json", "sink": "too_large"},
    )
    assert report.problems == {"not_dead_lettered": 1}
    assert report.produced == 0


def test_with_since_older_documents_are_outside_the_window_not_extra() -> None:
    feed = Feed(since=1000.0)
    image_id = feed.image(produced_at=1500.0)
    feed.ledger.add_document(document(image_id))
    old = document(str(uuid.uuid4()))  # ProducedAt 100: before the window
    feed.ledger.add_document(old)
    late_stranger = dict(document(str(uuid.uuid4())), ProducedAt=2000.0)
    feed.ledger.add_document(late_stranger)
    report = feed.ledger.report("img_db")
    assert report.not_audited == 1
    assert report.extra.ids == [late_stranger["_id"]]
    assert report.documents == 3


def test_id_lists_are_capped_but_counts_are_not() -> None:
    feed = Feed()
    for _ in range(30):
        feed.image()
    report = feed.ledger.report("img_db", list_limit=5)
    assert report.lost.count == 30 and len(report.lost.ids) == 5
    assert report.lost.ids == sorted(report.lost.ids)


def test_report_as_json_and_as_a_table() -> None:
    feed = Feed()
    lost = feed.image()
    stored = feed.image()
    feed.ledger.add_document(document(stored))
    report = feed.ledger.report("img_db")
    as_json = json.loads(json.dumps(report.to_json()))
    assert as_json["ok"] is False and as_json["problems"] == {"lost": 1}
    assert as_json["lost"] == {"count": 1, "ids": [lost]}
    assert as_json["complete"] == 1

    out = io.StringIO()
    render_table(report, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "lost (never stored)" in text and lost in text
    assert "PROBLEMS: lost 1" in text


def test_since_accepts_iso_or_epoch_and_naive_times_are_utc() -> None:
    assert AuditSettings(since="2026-01-01T00:00:00").since_epoch == 1767225600.0  # type: ignore[arg-type]
    assert AuditSettings(since="2026-01-01T01:00:00+01:00").since_epoch == 1767225600.0  # type: ignore[arg-type]
    assert AuditSettings(since="1767225600").since_epoch == 1767225600.0  # type: ignore[arg-type]
    assert AuditSettings().since_epoch is None


def test_json_flag_and_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_COUCHDB_DB", "other_db")
    settings = load_settings(AuditSettings, ["--json", "--page-size", "50"], "iot-audit")
    assert settings.json_output and settings.page_size == 50 and settings.couchdb_db == "other_db"


def test_bad_settings_exit_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IOT_SINCE", "last tuesday")
    assert audit.main([]) == audit.EXIT_BAD_CONFIG
    assert "IOT_SINCE" in capsys.readouterr().err
    monkeypatch.delenv("IOT_SINCE")
    assert audit.main(["--page-size", "0"]) == audit.EXIT_BAD_CONFIG
    assert "IOT_PAGE_SIZE" in capsys.readouterr().err


def test_an_unreachable_broker_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unreachable(*_args: object, **_kwargs: object) -> None:
        raise audit.AuditError("topic iot-topic not found on nowhere:9092")

    monkeypatch.setattr(audit, "run_audit", unreachable)
    assert audit.main([]) == audit.EXIT_UNAVAILABLE
    assert "cannot audit: topic iot-topic not found" in capsys.readouterr().err


def test_a_run_audit_counts_an_image_lost_inside_kafka() -> None:
    # No record was read: the broker lost one, and the topics would not have shown it.
    planned = RunPlan(count=4).image_ids("run-1")
    ledger = Ledger(IMAGES, PREDICTIONS)
    ledger.expect("run-1", planned)
    for image_id in planned[1:]:
        ledger.add_document(document(image_id))
    ledger.add_document(document(RunPlan(count=1).image_ids("another-run")[0]))
    report = ledger.report("img_db")
    assert (report.run_id, report.produced, report.complete) == ("run-1", 4, 3)
    assert report.lost.ids == [planned[0]]
    assert (report.not_audited, report.extra.count) == (1, 0)  # another run's, not extra
    assert report.problems == {"lost": 1}

    out = io.StringIO()
    render_table(report, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "run run-1" in text and "planned (the run's IDs)" in text and "image records" not in text
    assert "PROBLEMS: lost 1" in text


def test_the_audit_reads_the_producers_plan_under_the_same_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"IOT_COUNT": "50", "IOT_ORDER": "random", "IOT_SEED": "7"}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(AuditSettings, ["--run-id", "run-1"], "iot-audit")
    assert settings.image_ids("run-1") == RunPlan(count=50, order="random", seed=7).image_ids("run-1")


def test_a_run_is_its_own_window(capsys: pytest.CaptureFixture[str]) -> None:
    assert audit.main(["--run-id", "r", "--since", "1767225600"]) == audit.EXIT_BAD_CONFIG
    assert "--run-id or --since" in capsys.readouterr().err
