"""Inference metrics (prefix `iot_inference_`); shared Kafka metrics are in `iot_shared.metrics`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from iot_shared.metrics import LATENCY_BUCKETS
from iot_shared.schema import CLASSES

PREDICTIONS = Counter("iot_inference_predictions", "Predictions published, by class", ["class_name"])
for _name in CLASSES:
    PREDICTIONS.labels(_name)  # every class exported from the start, at 0
BATCH_SECONDS = Histogram(
    "iot_inference_batch_duration_seconds", "Model forward pass per batch", buckets=LATENCY_BUCKETS
)
IMAGE_SECONDS = Histogram(
    "iot_inference_image_duration_seconds",
    "Model forward pass per image (batch time / batch size)",
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "iot_inference_batch_size_images",
    "Images per forward pass",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
MODEL_LOAD_SECONDS = Gauge("iot_inference_model_load_seconds", "Time taken to load the model")
