"""What the audit keeps and the report it makes: pure, no I/O.

Records first (`add_record`, `add_dead_letter`) or a run's planned IDs (`expect`), then
documents (`add_document`): a document is judged as it streams by and then forgotten.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from iot_shared.errors import InvalidMessageError
from iot_shared.schema import ImageMessage, PredictionMessage
from iot_shared.wire_fields import ATTACHMENT, GROUND_TRUTH, INFERRED_AT, INFERRED_VALUE, PRODUCED_AT
from iot_sink.documents import Document

# Who must dead-letter a bad record of each topic: inference and sink both read the images topic.
DEAD_LETTERED_BY = {"images": ("inference", "sink"), "predictions": ("sink",)}


@dataclass(frozen=True, order=True)
class RecordRef:
    """Where a record is: what a dead letter's `dlq.source.*` headers point back to."""

    topic: str
    partition: int
    offset: int


@dataclass
class Ids:
    """How many, and the first few of them (sorted, so a report is stable)."""

    count: int
    ids: list[str]

    @classmethod
    def of(cls, ids: set[str] | list[str], limit: int) -> Ids:
        return cls(len(ids), sorted(ids)[:limit])


@dataclass
class BadRecord:
    """A record that breaks the contract, why, and what the dead-letter topic says about it."""

    topic: str
    partition: int
    offset: int
    reason: str
    dead_lettered_by: dict[str, str]  # service -> the reason it gave


@dataclass
class Report:
    images_topic: str
    predictions_topic: str
    db: str
    since: float | None
    run_id: str | None  # --run-id: the run's planned IDs were audited, the topics not read
    produced: int  # distinct IDs of valid images, or of the run's plan
    image_records: int
    duplicate_images: Ids  # IDs sent more than once
    predicted: int  # distinct IDs with a valid prediction
    prediction_records: int
    duplicate_predictions: Ids
    documents: int
    complete: int  # documents of produced IDs with ground truth, prediction and image
    missing_prediction: Ids
    missing_image: Ids
    lost: Ids  # produced (or planned), never stored
    extra: Ids  # stored, never produced (not judged with --run-id: other runs share the database)
    ground_truth_mismatch: Ids
    orphan_predictions: Ids  # predictions of IDs never produced
    not_audited: int  # documents older than --since, or of other runs than --run-id
    bad_records: dict[str, int]  # "<topic>: <reason>" -> count
    not_dead_lettered: list[BadRecord]  # some service that reads the topic did not dead-letter it
    dead_letter_reason_differs: list[BadRecord]  # dead-lettered, with another reason than ours

    @property
    def problems(self) -> dict[str, int]:
        """Each failed check and how many it counts; empty when all is well."""
        counts = {
            "lost": self.lost.count,
            "extra": self.extra.count,
            "ground_truth_mismatch": self.ground_truth_mismatch.count,
            "missing_prediction": self.missing_prediction.count,
            "missing_image": self.missing_image.count,
            "not_dead_lettered": len(self.not_dead_lettered),
        }
        return {name: n for name, n in counts.items() if n}

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "problems": self.problems}


@dataclass
class _Stored:
    complete: int = 0
    missing_prediction: set[str] = field(default_factory=set)
    missing_image: set[str] = field(default_factory=set)
    extra: set[str] = field(default_factory=set)
    mismatch: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    not_audited: int = 0


class Ledger:
    """Everything the audit remembers: per image ID its ground truth and record count, per bad
    record where it is, per document only whether it was seen and what was wrong with it."""

    def __init__(self, images_topic: str, predictions_topic: str, since: float | None = None) -> None:
        self.images_topic = images_topic
        self.predictions_topic = predictions_topic
        self.since = since
        self.ground_truth: dict[str, str] = {}  # image ID -> GroundTruth of its last record
        self.image_records: Counter[str] = Counter()
        self.prediction_records: Counter[str] = Counter()
        self.bad: dict[RecordRef, str] = {}  # bad record -> the contract's reason
        self.dead_letters: dict[RecordRef, dict[str, str]] = {}  # source record -> {service: reason}
        self.run_id: str | None = None
        self.planned: set[str] | None = None  # the run's IDs (`expect`), instead of the topics'
        self.stored = _Stored()

    def expect(self, run_id: str, ids: Iterable[str]) -> None:
        """Judge the database against run `run_id`'s planned IDs, recomputed without the broker:
        an image lost inside Kafka is then lost too. Documents of other IDs belong to other runs."""
        self.run_id = run_id
        self.planned = set(ids)

    def add_record(self, ref: RecordRef, value: bytes | None) -> None:
        try:
            if ref.topic == self.images_topic:
                image = ImageMessage.decode(value)
                # Same ID, same key, same partition: records of one ID are read in send order.
                self.ground_truth[image.id] = image.ground_truth
                self.image_records[image.id] += 1
            else:
                prediction = PredictionMessage.decode(value)
                self.prediction_records[prediction.id] += 1
        except InvalidMessageError as exc:
            self.bad[ref] = exc.reason

    def add_dead_letter(self, headers: dict[str, str]) -> None:
        try:
            source = RecordRef(
                headers["dlq.source.topic"],
                int(headers["dlq.source.partition"]),
                int(headers["dlq.source.offset"]),
            )
        except (KeyError, ValueError):
            return  # not one of ours
        services = self.dead_letters.setdefault(source, {})
        services[headers.get("dlq.service", "?")] = headers.get("dlq.reason", "?")

    def add_document(self, doc: Document) -> None:
        doc_id = str(doc.get("_id", ""))
        if doc_id.startswith("_design/"):
            return
        stored = self.stored
        if doc_id not in self.produced:
            if self.planned is not None or self._before_window(doc):
                stored.not_audited += 1
            else:
                stored.extra.add(doc_id)
            return
        stored.seen.add(doc_id)
        has_image = GROUND_TRUTH in doc and ATTACHMENT in doc.get("_attachments", {})
        has_prediction = INFERRED_VALUE in doc
        if not has_image:
            stored.missing_image.add(doc_id)
        if not has_prediction:
            stored.missing_prediction.add(doc_id)
        if has_image and has_prediction:
            stored.complete += 1
        expected = self.ground_truth.get(doc_id)  # unknown for a planned ID, without its record
        if expected is not None and doc.get(GROUND_TRUTH, expected) != expected:
            stored.mismatch.add(doc_id)

    @property
    def produced(self) -> Collection[str]:
        """The IDs the database must hold: the run's plan, or what the topics hold."""
        return self.planned if self.planned is not None else self.ground_truth

    def _before_window(self, doc: Document) -> bool:
        """With --since, a document of an image sent before that time is not ours to judge."""
        if self.since is None:
            return False
        sent = doc.get(PRODUCED_AT, doc.get(INFERRED_AT))
        return isinstance(sent, int | float) and sent < self.since

    def report(self, db: str, list_limit: int = 20) -> Report:
        stored = self.stored
        produced = set(self.produced)
        bad_counts: Counter[str] = Counter(f"{ref.topic}: {reason}" for ref, reason in self.bad.items())
        not_dead, differs = self._dead_letter_checks()
        return Report(
            images_topic=self.images_topic,
            predictions_topic=self.predictions_topic,
            db=db,
            since=self.since,
            run_id=self.run_id,
            produced=len(produced),
            image_records=sum(self.image_records.values()),
            duplicate_images=_duplicates(self.image_records, list_limit),
            predicted=len(self.prediction_records),
            prediction_records=sum(self.prediction_records.values()),
            duplicate_predictions=_duplicates(self.prediction_records, list_limit),
            documents=len(stored.seen) + len(stored.extra) + stored.not_audited,
            complete=stored.complete,
            missing_prediction=Ids.of(stored.missing_prediction, list_limit),
            missing_image=Ids.of(stored.missing_image, list_limit),
            lost=Ids.of(produced - stored.seen, list_limit),
            extra=Ids.of(stored.extra, list_limit),
            ground_truth_mismatch=Ids.of(stored.mismatch, list_limit),
            orphan_predictions=Ids.of(set(self.prediction_records) - produced, list_limit),
            not_audited=stored.not_audited,
            bad_records=dict(sorted(bad_counts.items())),
            not_dead_lettered=not_dead,
            dead_letter_reason_differs=differs,
        )

    def _dead_letter_checks(self) -> tuple[list[BadRecord], list[BadRecord]]:
        not_dead: list[BadRecord] = []
        differs: list[BadRecord] = []
        for ref, reason in sorted(self.bad.items()):
            by = self.dead_letters.get(ref, {})
            record = BadRecord(ref.topic, ref.partition, ref.offset, reason, dict(sorted(by.items())))
            role = "images" if ref.topic == self.images_topic else "predictions"
            if any(service not in by for service in DEAD_LETTERED_BY[role]):
                not_dead.append(record)
            elif any(given != reason for given in by.values()):
                differs.append(record)
        return not_dead, differs


def _duplicates(records: Counter[str], limit: int) -> Ids:
    return Ids.of([doc_id for doc_id, n in records.items() if n > 1], limit)
