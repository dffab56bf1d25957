"""Seed-style sink: for every message, GET the document, merge, PUT it back (plain `requests`)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import requests
from kafka import KafkaConsumer  # type: ignore[import-untyped]

from benchmarks.baseline.settings import BaselineSettings
from iot_shared import wire_fields as wire

IMAGE_FIELDS = (wire.GROUND_TRUTH, wire.PRODUCED_AT, wire.SOURCE)
PREDICTION_FIELDS = (wire.INFERRED_VALUE, wire.CONFIDENCE, wire.MODEL, wire.INFERRED_AT)


def merge(doc: dict[str, Any], message: dict[str, Any], is_image: bool) -> None:
    for name in IMAGE_FIELDS if is_image else PREDICTION_FIELDS:
        doc[name] = message[name]
    if is_image:
        attachments = doc.setdefault("_attachments", {})
        attachments[wire.ATTACHMENT] = {"content_type": "image/png", "data": message[wire.DATA]}
    doc[wire.STORED_AT] = time.time()


def store(settings: BaselineSettings, message: dict[str, Any], is_image: bool) -> None:
    url = f"{settings.couchdb_url}/{settings.couchdb_db}/{message[wire.ID]}"
    auth = (settings.couchdb_user, settings.couchdb_password)
    while True:  # a 409 means someone wrote in between: read again
        found = requests.get(url, auth=auth, timeout=30)
        doc = found.json() if found.status_code == 200 else {"_id": message[wire.ID]}
        merge(doc, message, is_image)
        written = requests.put(url, json=doc, auth=auth, timeout=30)
        if written.status_code != 409:
            written.raise_for_status()
            return


def main() -> int:
    settings = BaselineSettings.from_env()
    auth = (settings.couchdb_user, settings.couchdb_password)
    requests.put(f"{settings.couchdb_url}/{settings.couchdb_db}", auth=auth, timeout=30)  # 412: exists
    consumer = KafkaConsumer(
        settings.images_topic,
        settings.predictions_topic,
        bootstrap_servers=settings.bootstrap,
        group_id=settings.group_id,
        auto_offset_reset="earliest",
    )
    for record in consumer:
        store(settings, json.loads(record.value), is_image=record.topic == settings.images_topic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
