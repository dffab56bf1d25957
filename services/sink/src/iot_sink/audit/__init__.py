"""`iot-audit`: did every image that was sent end up as exactly one complete document?

It reads the images, predictions and dead-letter topics from the beginning (or from `--since`)
by plain partition assignment: no consumer group is joined and nothing is committed, so the
services' offsets are never touched. It stops at the high watermarks taken when it starts, so a
running pipeline does not keep it reading. Then it pages through the database with `_all_docs`
(attachment stubs, never their data). Only IDs and a few small facts per image are kept, never
a payload or a whole document.

With `--run-id R` it trusts no broker: the run's IDs are recomputed from the run id and the
producer's plan (`iot_shared.run_plan`), so an image the producer had acknowledged but Kafka then
lost is reported lost; the topics are not read.

Exit codes: 0 all delivered, 1 something lost, incomplete, extra, mismatched or not
dead-lettered, 2 bad settings, 3 the broker or CouchDB could not be read.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import requests
from confluent_kafka import KafkaException, Message
from ibm_cloud_sdk_core import ApiException
from rich.console import Console

from iot_shared.couch import make_client
from iot_shared.kafka import as_text
from iot_shared.service import EXIT_BAD_CONFIG, program_settings
from iot_sink.audit.ledger import Ledger, RecordRef, Report
from iot_sink.audit.readers import AuditError, ProgressBars, read_documents, read_topics
from iot_sink.audit.render import render_table
from iot_sink.audit.settings import AuditSettings

__all__ = [
    "EXIT_BAD_CONFIG",
    "AuditSettings",
    "Ledger",
    "RecordRef",
    "Report",
    "main",
    "render_table",
    "run_audit",
]

EXIT_OK, EXIT_PROBLEMS, EXIT_UNAVAILABLE = 0, 1, 3  # and EXIT_BAD_CONFIG, 2, as every program


def run_audit(settings: AuditSettings, progress: bool = False) -> Report:
    """Read the topics (or recompute the run's IDs), then the database, and compare them."""
    bar = ProgressBars(progress)
    ledger = Ledger(settings.images_topic, settings.predictions_topic, settings.since_epoch)
    if settings.run_id is not None:
        ledger.expect(settings.run_id, settings.image_ids(settings.run_id))
    else:
        read_records(settings, ledger, bar)
    read_documents(make_client(settings), settings.couchdb_db, settings.page_size, ledger.add_document, bar)
    return ledger.report(settings.couchdb_db, settings.list_ids)


def read_records(settings: AuditSettings, ledger: Ledger, bar: ProgressBars) -> None:
    """Every record of the images and predictions topics, then the dead letters, into `ledger`."""

    def on_record(msg: Message) -> None:
        ledger.add_record(
            RecordRef(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)), msg.value()
        )

    def on_dead_letter(msg: Message) -> None:
        headers = msg.headers() or []
        pairs = headers.items() if isinstance(headers, dict) else headers
        ledger.add_dead_letter({name: as_text(value) for name, value in pairs})

    # The dead-letter topic last: its high watermark then covers what the services wrote for the rest.
    read_topics(settings, [settings.images_topic, settings.predictions_topic], on_record, bar)
    read_topics(settings, [settings.dlq_topic], on_dead_letter, bar, optional=[settings.dlq_topic])


def main(argv: Sequence[str] | None = None) -> int:
    if (settings := program_settings(AuditSettings, argv, "iot-audit")) is None:
        return EXIT_BAD_CONFIG
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
