"""`iot-audit`: did every image that was sent end up as exactly one complete document?

It reads the images, predictions and dead-letter topics from the beginning (or from `--since`)
by plain partition assignment: no consumer group is joined and nothing is committed, so the
services' offsets are never touched. It stops at the high watermarks taken when it starts, so a
running pipeline does not keep it reading. Then it pages through the database with `_all_docs`
(attachment stubs, never their data). Only IDs and a few small facts per image are kept, never
a payload or a whole document.

Exit codes: 0 all delivered, 1 something lost, incomplete, extra, mismatched or not
dead-lettered, 2 bad settings, 3 the broker or CouchDB could not be read.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from ibm_cloud_sdk_core import ApiException
from ibmcloudant.cloudant_v1 import CloudantV1
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from iot_shared.couch import make_client
from iot_shared.errors import ConfigError, InvalidMessageError, PipelineError
from iot_shared.kafka import base_config
from iot_shared.logs import configure_logging
from iot_shared.schema import ImageMessage, PredictionMessage
from iot_shared.settings import CouchSettings, load_settings
from iot_sink.documents import ATTACHMENT, Document

log = logging.getLogger("iot_audit")

EXIT_OK, EXIT_PROBLEMS, EXIT_BAD_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3
# Who must dead-letter a bad record of each topic: inference and sink both read the images topic.
DEAD_LETTERED_BY = {"images": ("inference", "sink"), "predictions": ("sink",)}


class AuditSettings(CouchSettings):
    """Where to look: the same `IOT_*` variables as the services, and a few of the audit's own."""

    model_config = SettingsConfigDict(cli_shortcuts={"json-output": "json"})

    couchdb_user: str = Field("iot_reader", min_length=1, description="CouchDB user: reading is enough")
    since: datetime | None = Field(
        None,
        description="Audit only records from this time on: ISO 8601 (UTC unless it says otherwise) "
        "or Unix epoch seconds; unset = from the beginning",
    )
    json_output: bool = Field(False, description="Print the report as JSON (--json)")
    page_size: int = Field(1000, ge=1, le=10000, description="Documents per CouchDB request")
    kafka_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest wait for the broker: metadata, watermarks, a silent partition"
    )
    list_ids: int = Field(20, ge=0, description="Most IDs listed per problem; the counts are always complete")

    @property
    def since_epoch(self) -> float | None:
        if self.since is None:
            return None
        since = self.since if self.since.tzinfo else self.since.replace(tzinfo=UTC)
        return since.timestamp()


class AuditError(PipelineError):
    """The audit could not read what it must read (a topic missing, a broker error)."""


# --- what the audit keeps, and the report it makes: pure, no I/O -----------------------


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
    produced: int  # distinct IDs of valid images
    image_records: int
    duplicate_images: Ids  # IDs sent more than once
    predicted: int  # distinct IDs with a valid prediction
    prediction_records: int
    duplicate_predictions: Ids
    documents: int
    complete: int  # documents of produced IDs with ground truth, prediction and image
    missing_prediction: Ids
    missing_image: Ids
    lost: Ids  # produced, never stored
    extra: Ids  # stored, never produced
    ground_truth_mismatch: Ids
    orphan_predictions: Ids  # predictions of IDs never produced
    outside_window: int  # documents older than --since, not audited
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
    outside_window: int = 0


class Ledger:
    """Everything the audit remembers: per image ID its ground truth and record count, per bad
    record where it is, per document only whether it was seen and what was wrong with it.

    Records first (`add_record`, `add_dead_letter`), then documents (`add_document`): a
    document is judged against the records as it streams by and then forgotten.
    """

    def __init__(self, images_topic: str, predictions_topic: str, since: float | None = None) -> None:
        self.images_topic = images_topic
        self.predictions_topic = predictions_topic
        self.since = since
        self.ground_truth: dict[str, str] = {}  # image ID -> GroundTruth of its last record
        self.image_records: Counter[str] = Counter()
        self.prediction_records: Counter[str] = Counter()
        self.bad: dict[RecordRef, str] = {}  # bad record -> the contract's reason
        self.dead_letters: dict[RecordRef, dict[str, str]] = {}  # source record -> {service: reason}
        self.stored = _Stored()

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
        expected = self.ground_truth.get(doc_id)
        if expected is None:
            if self._before_window(doc):
                stored.outside_window += 1
            else:
                stored.extra.add(doc_id)
            return
        stored.seen.add(doc_id)
        has_image = "GroundTruth" in doc and ATTACHMENT in doc.get("_attachments", {})
        has_prediction = "InferredValue" in doc
        if not has_image:
            stored.missing_image.add(doc_id)
        if not has_prediction:
            stored.missing_prediction.add(doc_id)
        if has_image and has_prediction:
            stored.complete += 1
        if "GroundTruth" in doc and doc["GroundTruth"] != expected:
            stored.mismatch.add(doc_id)

    def _before_window(self, doc: Document) -> bool:
        """With --since, a document of an image sent before that time is not ours to judge."""
        if self.since is None:
            return False
        sent = doc.get("ProducedAt", doc.get("InferredAt"))
        return isinstance(sent, int | float) and sent < self.since

    def report(self, db: str, list_limit: int = 20) -> Report:
        stored = self.stored
        produced = set(self.ground_truth)
        bad_counts: Counter[str] = Counter(f"{ref.topic}: {reason}" for ref, reason in self.bad.items())
        not_dead, differs = self._dead_letter_checks()
        return Report(
            images_topic=self.images_topic,
            predictions_topic=self.predictions_topic,
            db=db,
            since=self.since,
            produced=len(produced),
            image_records=sum(self.image_records.values()),
            duplicate_images=_duplicates(self.image_records, list_limit),
            predicted=len(self.prediction_records),
            prediction_records=sum(self.prediction_records.values()),
            duplicate_predictions=_duplicates(self.prediction_records, list_limit),
            documents=len(stored.seen) + len(stored.extra) + stored.outside_window,
            complete=stored.complete,
            missing_prediction=Ids.of(stored.missing_prediction, list_limit),
            missing_image=Ids.of(stored.missing_image, list_limit),
            lost=Ids.of(produced - stored.seen, list_limit),
            extra=Ids.of(stored.extra, list_limit),
            ground_truth_mismatch=Ids.of(stored.mismatch, list_limit),
            orphan_predictions=Ids.of(set(self.prediction_records) - produced, list_limit),
            outside_window=stored.outside_window,
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


# --- reading: Kafka by assignment, CouchDB by pages ------------------------------------


class _Progress:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if not self.enabled:
            yield lambda _n: None
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task_id = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task_id, n)


def read_topics(
    settings: AuditSettings,
    topics: Sequence[str],
    on_record: Callable[[Message], None],
    progress: _Progress,
    optional: Sequence[str] = (),
) -> None:
    """Feed every record of `topics` between the start (or --since) and the high watermarks
    taken now to `on_record`. A topic in `optional` may be missing (read as empty)."""
    consumer = Consumer(
        {
            **base_config(settings, "iot-audit"),
            # Never joined nor committed (assign, not subscribe): a name no service uses.
            "group.id": f"iot-audit-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            # librdkafka fetches ahead up to 64 MB per consumer by default: keep the audit's
            # memory bounded by its ID sets, not by how much of a topic sits in the fetch queue.
            "queued.max.messages.kbytes": 8192,
        }
    )
    try:
        ranges = _ranges(consumer, settings, topics, optional)
        total = sum(end - start for start, end in ranges.values())
        with progress.task(f"reading {', '.join(topics)}", total) as advance:
            _consume_ranges(consumer, ranges, settings.kafka_timeout_seconds, on_record, advance)
    finally:
        consumer.close()


def _ranges(
    consumer: Consumer, settings: AuditSettings, topics: Sequence[str], optional: Sequence[str]
) -> dict[tuple[str, int], tuple[int, int]]:
    """Per partition: the first offset to read and the high watermark (exclusive end)."""
    timeout = settings.kafka_timeout_seconds
    metadata = consumer.list_topics(timeout=timeout)
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            if topic in optional:
                continue
            raise AuditError(f"topic {topic} not found on {settings.kafka_bootstrap_servers}")
        for partition in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
            ranges[topic, partition] = (low, high)
    since = settings.since_epoch
    if since is not None and ranges:
        asked = [TopicPartition(t, p, int(since * 1000)) for (t, p) in ranges]
        for tp in consumer.offsets_for_times(asked, timeout=timeout):
            low, high = ranges[tp.topic, tp.partition]
            # -1: no record at or after that time.
            ranges[tp.topic, tp.partition] = (high if tp.offset < 0 else max(low, tp.offset), high)
    return {key: (start, end) for key, (start, end) in ranges.items() if start < end}


def _consume_ranges(
    consumer: Consumer,
    ranges: dict[tuple[str, int], tuple[int, int]],
    idle_timeout: float,
    on_record: Callable[[Message], None],
    advance: Callable[[int], None],
) -> None:
    if not ranges:
        return
    consumer.assign([TopicPartition(t, p, start) for (t, p), (start, _end) in ranges.items()])
    todo = set(ranges)
    idle = 0.0
    while todo:
        batch = consumer.consume(500, 1.0)
        idle = idle + 1.0 if not batch else 0.0
        if idle >= idle_timeout:
            missing = ", ".join(f"{t}[{p}]" for t, p in sorted(todo))
            raise AuditError(f"no records for {idle_timeout:.0f}s from {missing}")
        done: list[tuple[str, int]] = []
        for msg in batch:
            key = (str(msg.topic()), int(msg.partition() or 0))
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    if err.fatal():
                        raise AuditError(f"broker error: {err}")
                    log.warning("consumer error: %s", err)
                elif key in todo and (msg.offset() or 0) >= ranges[key][1]:
                    done.append(key)
                continue
            offset = msg.offset() or 0
            if key not in todo or offset >= ranges[key][1]:
                continue
            on_record(msg)
            advance(1)
            if offset >= ranges[key][1] - 1:
                done.append(key)
        for key in done:
            if key in todo:
                todo.discard(key)
                consumer.pause([TopicPartition(*key)])  # nothing past the high watermark


def read_documents(
    client: CloudantV1, db: str, page_size: int, on_doc: Callable[[Document], None], progress: _Progress
) -> None:
    """Page through `_all_docs` in ID order, `page_size` at a time, with attachment stubs only."""
    total = client.get_database_information(db=db).get_result().get("doc_count")
    start_key: str | None = None
    with progress.task(f"reading {db}", total) as advance:
        while True:
            paging: dict[str, Any] = {} if start_key is None else {"start_key": start_key, "skip": 1}
            result = client.post_all_docs(
                db=db, include_docs=True, attachments=False, limit=page_size, **paging
            ).get_result()
            rows = result["rows"]
            for row in rows:
                if row.get("doc"):
                    on_doc(row["doc"])
            advance(len(rows))
            if len(rows) < page_size:
                return
            start_key = rows[-1]["id"]


def run_audit(settings: AuditSettings, progress: bool = False) -> Report:
    """Read the topics, then the database, and compare them."""
    bar = _Progress(progress)
    ledger = Ledger(settings.images_topic, settings.predictions_topic, settings.since_epoch)

    def on_record(msg: Message) -> None:
        ledger.add_record(
            RecordRef(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)), msg.value()
        )

    def on_dead_letter(msg: Message) -> None:
        headers = msg.headers() or []
        pairs = headers.items() if isinstance(headers, dict) else headers
        ledger.add_dead_letter({name: _text(value) for name, value in pairs})

    # The dead-letter topic last: its high watermark then covers what the services wrote for the rest.
    read_topics(settings, [settings.images_topic, settings.predictions_topic], on_record, bar)
    read_topics(settings, [settings.dlq_topic], on_dead_letter, bar, optional=[settings.dlq_topic])
    read_documents(make_client(settings), settings.couchdb_db, settings.page_size, ledger.add_document, bar)
    return ledger.report(settings.couchdb_db, settings.list_ids)


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


# --- output -----------------------------------------------------------------------------


def render_table(report: Report, console: Console) -> None:
    title = f"Delivery audit: {report.images_topic} + {report.predictions_topic} -> {report.db}"
    if report.since is not None:
        title += f" (since {datetime.fromtimestamp(report.since, UTC).isoformat()})"
    table = Table(title=title, title_justify="left")
    table.add_column("check")
    table.add_column("count", justify="right")
    table.add_column("IDs (first few)", overflow="fold")

    def ids(value: Ids) -> str:
        return ", ".join(value.ids) + (" ..." if value.count > len(value.ids) else "")

    def row(name: str, value: int | Ids, bad: bool = False) -> None:
        count = value if isinstance(value, int) else value.count
        style = "bold red" if bad and count else None
        table.add_row(name, f"{count:,}", "" if isinstance(value, int) else ids(value), style=style)

    row("produced (distinct IDs)", report.produced)
    row("image records", report.image_records)
    row("  IDs sent more than once", report.duplicate_images)
    row("predicted (distinct IDs)", report.predicted)
    row("prediction records", report.prediction_records)
    row("  IDs predicted more than once", report.duplicate_predictions)
    row("documents", report.documents)
    row("stored complete", report.complete)
    row("missing a prediction", report.missing_prediction, bad=True)
    row("missing an image", report.missing_image, bad=True)
    row("lost (never stored)", report.lost, bad=True)
    row("extra (ID never produced)", report.extra, bad=True)
    row("ground truth differs", report.ground_truth_mismatch, bad=True)
    row("predictions of unknown IDs", report.orphan_predictions)
    if report.since is not None:
        row("documents before --since", report.outside_window)
    for name, count in report.bad_records.items():
        row(f"bad record, {name}", count)
    for label, records, bad in (
        ("not dead-lettered", report.not_dead_lettered, True),
        ("dead-lettered with another reason", report.dead_letter_reason_differs, False),
    ):
        detail = ", ".join(
            f"{r.topic}[{r.partition}]@{r.offset} {r.reason} {r.dead_lettered_by}" for r in records
        )
        table.add_row(
            label, f"{len(records):,}", detail[:2000], style="bold red" if bad and records else None
        )
    console.print(table)
    if report.ok:
        console.print(f"OK: all {report.produced:,} images are stored complete, nothing extra")
    else:
        problems = ", ".join(f"{name} {n:,}" for name, n in report.problems.items())
        console.print(f"PROBLEMS: {problems}", style="bold red")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(AuditSettings, sys.argv[1:] if argv is None else argv, "iot-audit")
    except ConfigError as exc:
        sys.stderr.write(f"iot-audit: {exc}\n")
        return EXIT_BAD_CONFIG
    configure_logging(settings.log_level)
    try:
        report = run_audit(settings, progress=sys.stderr.isatty())
    except (AuditError, KafkaException, ApiException, requests.RequestException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
        sys.stderr.write(f"iot-audit: cannot audit: {reason}\n")
        return EXIT_UNAVAILABLE
    if settings.json_output:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=140)
        render_table(report, console)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(main())
