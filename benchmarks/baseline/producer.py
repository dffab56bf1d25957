"""Seed-style producer: one kafka-python `send` and one `flush` per image, at full speed."""

from __future__ import annotations

import base64
import io
import json
import sys
import time
import uuid
from typing import Any

from kafka import KafkaProducer  # type: ignore[import-untyped]
from PIL import Image

from benchmarks.baseline.settings import BaselineSettings
from iot_producer.cifar import load_split
from iot_shared.wire_fields import DATA, GROUND_TRUTH, ID, PRODUCED_AT, SOURCE


def png_base64(pixels: Any) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def main() -> int:
    settings = BaselineSettings.from_env()
    dataset = load_split(settings.data_dir, "test")
    # acks=1: kafka-python 2.0's default, which the original deployment ran with.
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks=1)
    for i in range(settings.count):
        index = i % len(dataset)
        image_id = str(uuid.uuid4())
        message = {
            ID: image_id,
            GROUND_TRUTH: dataset.class_name(index),
            DATA: png_base64(dataset.images[index]),
            PRODUCED_AT: time.time(),
            SOURCE: settings.source,
        }
        producer.send(settings.images_topic, json.dumps(message).encode(), key=image_id.encode())
        producer.flush()  # the seed waited for every single message
    producer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
