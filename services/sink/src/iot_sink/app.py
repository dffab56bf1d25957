"""Consume images and predictions, merge them into one CouchDB document per image, then commit.

At-least-once: offsets are committed only after the batch is in CouchDB. While CouchDB is
down the same batch is retried with backoff; nothing is skipped and the process stays up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack

import requests
from confluent_kafka import Message
from ibm_cloud_sdk_core import ApiException
from ibmcloudant.cloudant_v1 import CloudantV1

from iot_shared.consumer import commit_processed, make_consumer, rewind, usable
from iot_shared.couch import ensure_database, make_client, ping
from iot_shared.dead_letters import DeadLetters
from iot_shared.errors import ConfigError, InvalidMessageError
from iot_shared.lifecycle import StopFlag, backoff_delays, wait_until
from iot_shared.metrics import serve_http
from iot_shared.publisher import Publisher
from iot_shared.schema import ImageMessage, PredictionMessage
from iot_sink.documents import Update, group_by_id
from iot_sink.metrics import WRITE_RETRIES
from iot_sink.settings import SinkSettings
from iot_sink.store import DocumentStore, WriteError

log = logging.getLogger("iot_sink")
SERVICE = "sink"
COUCH_ERRORS = (ApiException, requests.RequestException)
# A refused document (permissions, validation) is retried too: the batch stays uncommitted, the
# service stays up and says why, rather than exiting into a restart loop.
WRITE_ERRORS = (*COUCH_ERRORS, WriteError)


def decode_batch(
    records: Sequence[Message], images_topic: str, dead_letters: DeadLetters
) -> dict[str, Update]:
    messages: list[ImageMessage | PredictionMessage] = []
    for record in records:
        decode = ImageMessage.decode if record.topic() == images_topic else PredictionMessage.decode
        try:
            messages.append(decode(record.value()))
        except InvalidMessageError as exc:
            dead_letters.send(record, exc)
    return group_by_id(messages)


def write_until_stored(store: DocumentStore, updates: dict[str, Update], stop: StopFlag) -> bool:
    """Retry the same write with backoff until it succeeds (True) or the service stops (False)."""
    next_delay = backoff_delays()
    while not stop:
        try:
            store.write(updates)
            return True
        except WRITE_ERRORS as exc:
            delay = next_delay()
            WRITE_RETRIES.inc()
            log.warning("CouchDB write failed (%s); retrying in %.1fs", _short(exc), delay)
            stop.wait(delay)
    return False


def connect_couch(settings: SinkSettings, stop: StopFlag) -> CloudantV1:
    """Wait (bounded) for CouchDB and create the database; wrong credentials fail at once."""
    client = make_client(settings)

    def setup() -> None:
        try:
            ensure_database(client, settings.couchdb_db)
        except ApiException as exc:
            if exc.status_code in (401, 403):
                raise ConfigError(
                    f"CouchDB at {settings.couchdb_url} refused IOT_COUCHDB_USER "
                    f"{settings.couchdb_user!r} / IOT_COUCHDB_PASSWORD ({exc.status_code})"
                ) from None
            raise

    wait_until("CouchDB", setup, stop, settings.startup_timeout_seconds, COUCH_ERRORS)
    return client


def run(settings: SinkSettings, stop: StopFlag) -> int:
    client = connect_couch(settings, stop)
    store = DocumentStore(client, settings.couchdb_db)
    publisher = Publisher(settings, SERVICE)
    dead_letters = DeadLetters(publisher, settings.dlq_topic, SERVICE)
    topics = [settings.images_topic, settings.predictions_topic]
    consumer = make_consumer(settings, SERVICE, settings.group_id, topics)
    with ExitStack() as cleanup:
        cleanup.callback(publisher.flush, 30.0)
        cleanup.callback(consumer.close)
        server = serve_http(settings.metrics_port, lambda: _readiness(client, settings, publisher))
        if server is not None:
            cleanup.callback(server.shutdown)
        log.info("storing %s into %s/%s", " + ".join(topics), settings.couchdb_url, settings.couchdb_db)
        while not stop:
            records = usable(SERVICE, consumer.consume(settings.max_batch, settings.max_wait_ms / 1000))
            if not records:
                continue
            updates = decode_batch(records, settings.images_topic, dead_letters)
            if updates and not write_until_stored(store, updates, stop):
                break  # stopping mid-retry: leave the batch uncommitted for the next start
            if publisher.flush(30.0):
                log.error("dead letters not acknowledged; consuming the batch again")
                rewind(consumer, records)
                continue
            commit_processed(consumer, records)
    return 0


def _readiness(client: CloudantV1, settings: SinkSettings, publisher: Publisher) -> tuple[bool, str]:
    try:
        ping(client, settings.couchdb_db)
    except COUCH_ERRORS as exc:
        return False, f"couchdb not ready: {_short(exc)}"
    return publisher.readiness()


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
