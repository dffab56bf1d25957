"""Publish CIFAR-10 images with their ground truth to the images topic, paced like a camera."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from iot_producer import cifar
from iot_producer.settings import ProducerSettings
from iot_shared.errors import DeliveryError
from iot_shared.lifecycle import StopFlag
from iot_shared.metrics import serve_http
from iot_shared.publisher import Publisher
from iot_shared.schema import ImageMessage

log = logging.getLogger("iot_producer")
SERVICE = "producer"


def choose_indices(
    total: int, count: int, order: str, start: int = 0, seed: int = 0
) -> npt.NDArray[np.int64]:
    """Which images to send: `count` of them (0 = all), in file order from `start` or shuffled."""
    count = total if count == 0 else count
    if order == "random":
        rng = np.random.default_rng(seed)
        if count <= total:
            return rng.permutation(total)[:count].astype(np.int64)
        return rng.integers(0, total, size=count, dtype=np.int64)
    # Sequential wraps around, so any count works on any split.
    return (start + np.arange(count, dtype=np.int64)) % total


def image_message(dataset: cifar.Dataset, index: int, source: str) -> ImageMessage:
    return ImageMessage.from_pixels(
        id=str(uuid.uuid4()),
        ground_truth=dataset.class_name(index),
        pixels=dataset.images[index],
        produced_at=time.time(),
        source=source,
    )


def schedule(n: int, seconds_between: float, stop: StopFlag) -> Iterator[int]:
    """Yield 0..n-1 on a fixed clock (no drift from send time); stops early on SIGTERM."""
    started = time.monotonic()
    for i in range(n):
        if stop.wait(started + i * seconds_between - time.monotonic()):
            return
        yield i


def load_dataset(settings: ProducerSettings) -> cifar.Dataset:
    data_dir = settings.data_dir or cifar.download(settings.cache_dir)
    dataset = cifar.load_split(data_dir, settings.split)
    log.info("loaded %d %s images from %s", len(dataset), settings.split, data_dir)
    return dataset


def run(settings: ProducerSettings, stop: StopFlag) -> int:
    dataset = load_dataset(settings)
    indices = choose_indices(len(dataset), settings.count, settings.order, settings.start, settings.seed)
    publisher = Publisher(settings, SERVICE)
    server = serve_http(settings.metrics_port, publisher.readiness)
    sent = 0
    try:
        for i in schedule(len(indices), settings.seconds_between_images, stop):
            msg = image_message(dataset, int(indices[i]), settings.source_id)
            publisher.send(settings.images_topic, msg.encode(), key=msg.id)
            sent += 1
            log.debug("sent %s (%s)", msg.id, msg.ground_truth)
            if settings.seconds_between_images >= 1:
                log.info("sent image %d/%d: %s (%s)", sent, len(indices), msg.id, msg.ground_truth)
    finally:
        failures = publisher.flush(settings.flush_timeout_seconds)
        if server is not None:
            server.shutdown()
    log.info("sent %d images, %d not delivered", sent - len(failures), len(failures))
    if failures:
        raise DeliveryError(f"{len(failures)} of {sent} images were not delivered")
    return 0
