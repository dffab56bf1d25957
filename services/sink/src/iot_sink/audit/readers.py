"""Reading for the audit: Kafka by partition assignment up to the high watermarks taken at the
start, CouchDB by pages of `_all_docs`; each thing read goes to a callback and is not kept."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from ibmcloudant.cloudant_v1 import CloudantV1
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from iot_shared.errors import PipelineError
from iot_shared.kafka import base_config
from iot_sink.audit.settings import AuditSettings
from iot_sink.documents import Document

log = logging.getLogger("iot_audit")


class AuditError(PipelineError):
    """The audit could not read what it must read (a topic missing, a broker error)."""


class ProgressBars:
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
    progress: ProgressBars,
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
    client: CloudantV1, db: str, page_size: int, on_doc: Callable[[Document], None], progress: ProgressBars
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
