"""Consume images, classify them in micro-batches, publish predictions, then commit.

At-least-once: a batch's offsets are committed only after every prediction and dead letter
of that batch is acknowledged by the broker; if that fails, the batch is consumed again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack

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
from iot_shared.consumer import commit_processed, make_consumer, rewind, usable
from iot_shared.dead_letters import DeadLetters
from iot_shared.errors import InvalidMessageError
from iot_shared.lifecycle import StopFlag, backoff_delays
from iot_shared.metrics import BUILD_INFO, serve_http
from iot_shared.publisher import Publisher
from iot_shared.schema import MODEL_NAME, ImageMessage, PredictionMessage

log = logging.getLogger("iot_inference")
SERVICE = "inference"


def classify_batch(
    records: Sequence[Message], classifier: Classifier, dead_letters: DeadLetters
) -> list[PredictionMessage]:
    """Decode the batch, dead-letter what breaks the contract, classify the rest in one pass."""
    images: list[ImageMessage] = []
    for record in records:
        try:
            images.append(ImageMessage.decode(record.value()))
        except InvalidMessageError as exc:
            dead_letters.send(record, exc)
    if not images:
        return []
    started = time.perf_counter()
    predictions = classifier.predict([image.pixels for image in images])
    elapsed = time.perf_counter() - started
    BATCH_SECONDS.observe(elapsed)
    IMAGE_SECONDS.observe(elapsed / len(images))
    BATCH_SIZE.observe(len(images))
    now = time.time()
    return [
        PredictionMessage(image.id, p.label, p.confidence, inferred_at=now)
        for image, p in zip(images, predictions, strict=True)
    ]


def load_classifier(settings: InferenceSettings) -> Classifier:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    started = time.perf_counter()
    classifier = Classifier(load_resnet20(settings.weights))
    MODEL_LOAD_SECONDS.set(time.perf_counter() - started)
    BUILD_INFO.info({"service": "iot-inference", "version": __version__, "model": MODEL_NAME})
    log.info("model %s loaded in %.2fs", MODEL_NAME, time.perf_counter() - started)
    return classifier


def run(settings: InferenceSettings, stop: StopFlag) -> int:
    classifier = load_classifier(settings)
    publisher = Publisher(settings, SERVICE)
    dead_letters = DeadLetters(publisher, settings.dlq_topic, SERVICE)
    consumer = make_consumer(settings, SERVICE, settings.group_id, [settings.images_topic])
    next_delay = backoff_delays()
    with ExitStack() as cleanup:
        # Closed in reverse: stop serving, leave the group, then flush what is left.
        cleanup.callback(publisher.flush, settings.delivery_timeout_seconds)
        cleanup.callback(consumer.close)
        server = serve_http(settings.metrics_port, publisher.readiness)
        if server is not None:
            cleanup.callback(server.shutdown)
        log.info("classifying %s -> %s", settings.images_topic, settings.predictions_topic)
        while not stop:
            records = usable(SERVICE, consumer.consume(settings.max_batch, settings.max_wait_ms / 1000))
            if not records:
                continue
            for prediction in classify_batch(records, classifier, dead_letters):
                publisher.send(settings.predictions_topic, prediction.encode(), key=prediction.id)
                PREDICTIONS.labels(prediction.inferred_value).inc()
            if publisher.flush(settings.delivery_timeout_seconds):
                delay = next_delay()
                log.error("batch not acknowledged; consuming it again in %.1fs", delay)
                rewind(consumer, records)
                stop.wait(delay)
                continue
            next_delay = backoff_delays()
            commit_processed(consumer, records)
    return 0
