"""Seed-style inference: one image per forward pass, one `flush` per prediction."""

from __future__ import annotations

import base64
import io
import json
import sys
import time

import numpy as np
import torch
from kafka import KafkaConsumer, KafkaProducer  # type: ignore[import-untyped]
from PIL import Image

from benchmarks.baseline.settings import BaselineSettings
from iot_inference.classifier import to_tensor
from iot_inference.model import load_resnet20
from iot_shared.schema import CLASSES, MODEL_NAME
from iot_shared.wire_fields import CONFIDENCE, DATA, ID, INFERRED_AT, INFERRED_VALUE, MODEL


def main() -> int:
    settings = BaselineSettings.from_env()
    model = load_resnet20(settings.weights)
    consumer = KafkaConsumer(
        settings.images_topic,
        bootstrap_servers=settings.bootstrap,
        group_id=settings.group_id,
        auto_offset_reset="earliest",
    )
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks=1)
    for record in consumer:
        image = json.loads(record.value)
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(image[DATA]))).convert("RGB"))
        with torch.no_grad():
            probs = torch.softmax(model(to_tensor([pixels])), dim=1)[0]
        index = int(probs.argmax())
        prediction = {
            ID: image[ID],
            INFERRED_VALUE: CLASSES[index],
            CONFIDENCE: float(probs[index]),
            MODEL: MODEL_NAME,
            INFERRED_AT: time.time(),
        }
        producer.send(settings.predictions_topic, json.dumps(prediction).encode(), key=image[ID].encode())
        producer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
