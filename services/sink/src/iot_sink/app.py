"""Consume images and predictions, merge them into one CouchDB document per image, then commit.

At-least-once (see `iot_shared.batch_loop`): offsets are committed only after the batch is in
CouchDB. While CouchDB is down the sink holds its partitions back (paused, still polling, so it
stays in its group) and tries the same batch again with backoff; nothing is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import requests
from confluent_kafka import Message
from ibm_cloud_sdk_core import ApiException
from ibmcloudant.cloudant_v1 import CloudantV1

from iot_shared.batch_loop import BatchLoop, RetryLaterError
from iot_shared.consumer import GroupMember
from iot_shared.couch import make_client, ping
from iot_shared.errors import ConfigError, summary
from iot_shared.heartbeat import Heartbeat
from iot_shared.http_server import Readiness, open_port
from iot_shared.lifecycle import StopFlag, wait_until
from iot_shared.publisher import Publisher
from iot_shared.schema import ImageMessage, PredictionMessage
from iot_shared.service import loop_from_settings, run_consumer
from iot_sink.conflicts import ConflictSweeper
from iot_sink.documents import group_by_id
from iot_sink.metrics import WRITE_RETRIES
from iot_sink.settings import SinkSettings
from iot_sink.store import DocumentStore, WriteError

log = logging.getLogger("iot_sink")
SERVICE = "sink"
COUCH_ERRORS = (ApiException, requests.RequestException)
# A refused document (permissions, validation) is retried too: the batch stays uncommitted, the
# service stays up and says why, rather than exiting into a restart loop.
WRITE_ERRORS = (*COUCH_ERRORS, WriteError)


def message_decoder(images_topic: str) -> Callable[[Message], ImageMessage | PredictionMessage]:
    def decode(record: Message) -> ImageMessage | PredictionMessage:
        if record.topic() == images_topic:
            # The sink stores the PNG as it came: its header is checked, its pixels never decoded.
            return ImageMessage.decode(record.value(), with_pixels=False)
        return PredictionMessage.decode(record.value())

    return decode


def pairs_complete(images_topic: str, predictions_topic: str) -> Callable[[list[Message]], bool]:
    """`complete` for the batch loop: every image in the batch has its prediction and back (by
    record key, the image ID), so each document is written once, whole, not twice."""

    def complete(records: list[Message]) -> bool:
        images = {r.key() for r in records if r.topic() == images_topic}
        predictions = {r.key() for r in records if r.topic() == predictions_topic}
        return images == predictions

    return complete


def document_writer(store: DocumentStore) -> Callable[[list[ImageMessage | PredictionMessage]], None]:
    """`handle` for the batch loop: one merged write per batch; CouchDB trouble means retry later."""

    def write(messages: list[ImageMessage | PredictionMessage]) -> None:
        try:
            store.write(group_by_id(messages))
        except WRITE_ERRORS as exc:
            WRITE_RETRIES.inc()
            raise RetryLaterError(f"CouchDB write failed: {summary(exc)}") from exc

    return write


def connect_couch(settings: SinkSettings, stop: StopFlag) -> CloudantV1:
    """Wait (bounded) for CouchDB and the database, which `iot-couchdb-setup` makes (the sink is
    no server admin); credentials that are wrong or not a member fail at once."""
    client = make_client(settings)

    def readable() -> None:
        try:
            ping(client, settings.couchdb_db)
        except ApiException as exc:
            if exc.status_code in (401, 403):
                raise ConfigError(
                    f"CouchDB at {settings.couchdb_url} refused IOT_COUCHDB_USER "
                    f"{settings.couchdb_user!r} / IOT_COUCHDB_PASSWORD ({exc.status_code}"
                    f"{'' if exc.status_code == 401 else f': not a member of {settings.couchdb_db}'})"
                ) from None
            if exc.status_code == 404:
                raise ApiException(
                    404, message=f"no database {settings.couchdb_db} yet (iot-couchdb-setup makes it)"
                ) from None
            raise

    wait_until("CouchDB", readable, stop, settings.startup_timeout_seconds, COUCH_ERRORS)
    return client


def storage_loop(
    settings: SinkSettings,
    member: GroupMember,
    publisher: Publisher,
    store: DocumentStore,
    heartbeat: Heartbeat | None = None,
) -> BatchLoop[ImageMessage | PredictionMessage]:
    return loop_from_settings(
        settings,
        member,
        publisher,
        decode=message_decoder(settings.images_topic),
        handle=document_writer(store),
        complete=pairs_complete(settings.images_topic, settings.predictions_topic),
        heartbeat=heartbeat,
    )


def run(settings: SinkSettings, stop: StopFlag) -> int:
    heartbeat = Heartbeat(SERVICE, settings.stall_timeout_seconds)
    with open_port(settings, "waiting for CouchDB", heartbeat.liveness) as probe:
        client = connect_couch(settings, stop)
        store = DocumentStore(client, settings.couchdb_db)
        # A first sweep of a large database reads many pages of changes: each one beats.
        sweeper = ConflictSweeper(
            client, settings.couchdb_db, settings.conflict_sweep_seconds, beat=heartbeat.beat
        )
        topics = [settings.images_topic, settings.predictions_topic]
        log.info("storing %s into %s/%s", " + ".join(topics), settings.couchdb_url, settings.couchdb_db)
        run_consumer(
            settings,
            stop,
            probe,
            SERVICE,
            consumes=topics,
            produces=[],
            build_loop=lambda member, publisher: storage_loop(settings, member, publisher, store, heartbeat),
            depends_on=couch_readiness(client, settings.couchdb_db),
            # Between batches, and when none come, now and then: conflicting revisions merged.
            between=sweeper.sweep_if_due,
        )
        sweeper.sweep_if_due(force=True)  # what the last batches left, before the sink goes
    return 0


def couch_readiness(client: CloudantV1, db: str) -> Readiness:
    def ready() -> tuple[bool, str]:
        try:
            ping(client, db)
        except COUCH_ERRORS as exc:
            return False, f"couchdb not ready: {summary(exc)}"
        return True, "couchdb answers"

    return ready
