"""Consume images, classify them in micro-batches, publish predictions, then commit.

At-least-once (see `iot_shared.batch_loop`): a batch's offsets are committed only after every
prediction and dead letter of that batch is acknowledged by the broker; if that fails, the
batch is consumed again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import torch
from confluent_kafka import Message

from iot_inference import __version__
from iot_inference.classifier import Classifier
from iot_inference.metrics import (
    BATCH_SECONDS,
    BATCH_SIZE,
    IMAGE_SECONDS,
    MODEL_LOAD_SECONDS,
    PREDICTIONS,
)
from iot_inference.model import load_resnet20
from iot_inference.settings import InferenceSettings
from iot_shared.batch_loop import BatchLoop
from iot_shared.consumer import GroupMember
from iot_shared.heartbeat import Heartbeat
from iot_shared.http_server import open_port
from iot_shared.lifecycle import StopFlag
from iot_shared.metrics import BUILD_INFO
from iot_shared.png import Pixels
from iot_shared.publisher import Publisher
from iot_shared.schema import MODEL_NAME, ImageMessage, PredictionMessage
from iot_shared.service import loop_from_settings, run_consumer

log = logging.getLogger("iot_inference")
SERVICE = "inference"


def decode_image(record: Message) -> ImageMessage:
    return ImageMessage.decode(record.value())


def classify(images: Sequence[ImageMessage], classifier: Classifier) -> list[PredictionMessage]:
    """Classify a batch of decoded images in one forward pass."""
    started = time.perf_counter()
    predictions = classifier.predict([_pixels(image) for image in images])
    elapsed = time.perf_counter() - started
    BATCH_SECONDS.observe(elapsed)
    IMAGE_SECONDS.observe(elapsed / len(images))
    BATCH_SIZE.observe(len(images))
    now = time.time()
    return [
        PredictionMessage(image.id, p.label, p.confidence, inferred_at=now)
        for image, p in zip(images, predictions, strict=True)
    ]


def _pixels(image: ImageMessage) -> Pixels:
    if image.pixels is None:
        raise ValueError(f"image {image.id} was decoded without its pixels")
    return image.pixels


def default_torch_threads() -> int:
    """Torch's own default takes every core; on a machine it shares (with the broker, the sink or
    just this service's decoding and Kafka client) its threads then fight the others for them."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def load_classifier(settings: InferenceSettings) -> Classifier:
    torch.set_num_threads(settings.torch_threads or default_torch_threads())
    started = time.perf_counter()
    classifier = Classifier(load_resnet20(settings.weights))
    MODEL_LOAD_SECONDS.set(time.perf_counter() - started)
    BUILD_INFO.info({"service": "iot-inference", "version": __version__, "model": MODEL_NAME})
    log.info(
        "model %s loaded in %.2fs, %d torch threads",
        MODEL_NAME,
        time.perf_counter() - started,
        torch.get_num_threads(),
    )
    return classifier


def classification_loop(
    settings: InferenceSettings,
    member: GroupMember,
    publisher: Publisher,
    classifier: Classifier,
    heartbeat: Heartbeat | None = None,
) -> BatchLoop[ImageMessage]:
    def publish_predictions(images: list[ImageMessage]) -> None:
        for prediction in classify(images, classifier):
            publisher.send(settings.predictions_topic, prediction.encode(), key=prediction.id)
            PREDICTIONS.labels(prediction.inferred_value).inc()

    return loop_from_settings(
        settings, member, publisher, decode_image, publish_predictions, heartbeat=heartbeat
    )


def run(settings: InferenceSettings, stop: StopFlag) -> int:
    heartbeat = Heartbeat(SERVICE, settings.stall_timeout_seconds)
    with open_port(settings, "loading the model", heartbeat.liveness) as probe:
        classifier = load_classifier(settings)
        log.info("classifying %s -> %s", settings.images_topic, settings.predictions_topic)
        run_consumer(
            settings,
            stop,
            probe,
            SERVICE,
            consumes=[settings.images_topic],
            produces=[settings.predictions_topic],
            build_loop=lambda member, publisher: classification_loop(
                settings, member, publisher, classifier, heartbeat
            ),
        )
    return 0
