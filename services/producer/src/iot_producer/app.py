"""Publish CIFAR-10 images with their ground truth to the images topic, paced like a camera.

Each image's ID is fixed by its run (see `runs`): a producer restarted after a crash, a failed
delivery or a reboot sends the same images under the same IDs, so nothing is stored twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

from iot_producer import cifar
from iot_producer.runs import Run, open_run
from iot_producer.settings import ProducerSettings
from iot_shared.errors import DataError, DeliveryError
from iot_shared.heartbeat import Heartbeat
from iot_shared.http_server import Probe, open_port
from iot_shared.kafka import as_text
from iot_shared.lifecycle import StopFlag
from iot_shared.publisher import Publisher, Undelivered
from iot_shared.run_plan import SPLIT_SIZES, image_id
from iot_shared.schema import ImageMessage

log = logging.getLogger("iot_producer")
SERVICE = "producer"
# How many undelivered IDs the summary names; all of them go to a file when there are more.
LISTED_IDS = 20


def image_message(dataset: cifar.Dataset, index: int, source: str, id: str) -> ImageMessage:
    return ImageMessage.from_pixels(
        id=id,
        ground_truth=dataset.class_name(index),
        pixels=dataset.images[index],
        produced_at=time.time(),
        source=source,
    )


def schedule(n: int, seconds_between: float, stop: StopFlag, heartbeat: Heartbeat) -> Iterator[int]:
    """Yield 0..n-1 on a fixed clock (no drift from send time); stops early on SIGTERM. Beats
    HEARTBEAT for each image and every second of the waits between them (IOT_INTERVAL_SECONDS
    may be far longer than the stall limit)."""
    started = time.monotonic()
    for i in range(n):
        if heartbeat.wait(stop, started + i * seconds_between - time.monotonic()):
            return
        yield i


def load_dataset(settings: ProducerSettings) -> cifar.Dataset:
    data_dir = settings.data_dir or cifar.download(settings.cache_dir)
    dataset = cifar.load_split(data_dir, settings.split)
    if len(dataset) != SPLIT_SIZES[settings.split]:
        # The image IDs, and `iot-audit --run-id`'s copy of them, assume CIFAR-10's own sizes.
        raise DataError(
            f"the CIFAR-10 {settings.split} split in {data_dir} has {len(dataset)} images, "
            f"not {SPLIT_SIZES[settings.split]}"
        )
    log.info("loaded %d %s images from %s", len(dataset), settings.split, data_dir)
    return dataset


def run(settings: ProducerSettings, stop: StopFlag) -> int:
    heartbeat = Heartbeat(SERVICE, settings.stall_timeout_seconds)
    with open_port(settings, "loading CIFAR-10", heartbeat.liveness) as probe:
        return publish_run(settings, stop, probe, heartbeat)


def publish_run(settings: ProducerSettings, stop: StopFlag, probe: Probe, heartbeat: Heartbeat) -> int:
    dataset = load_dataset(settings)
    indices = settings.indices()
    current = open_run(settings.state_dir, settings.run_id)
    log.info("%s: %d %s images", current.describe(), len(indices), settings.split)
    publisher = Publisher(settings, SERVICE, topics=[settings.images_topic])
    probe.follow(publisher.readiness)
    sent: list[str] = []
    try:
        for position in schedule(len(indices), settings.seconds_between_images, stop, heartbeat):
            index = int(indices[position])
            msg = image_message(
                dataset, index, settings.source_id, image_id(current.id, settings.split, index, position)
            )
            publisher.send(settings.images_topic, msg.encode(), key=msg.id)
            sent.append(msg.id)
            log.debug("sent %s (%s)", msg.id, msg.ground_truth)
            if settings.seconds_between_images >= 1:
                log.info("sent image %d/%d: %s (%s)", len(sent), len(indices), msg.id, msg.ground_truth)
    finally:
        # Also after SIGTERM: what was sent gets its chance to be acknowledged.
        heartbeat.beat(then_waits=settings.flush_timeout_seconds)
        undelivered = publisher.flush(settings.flush_timeout_seconds)
    return finish(current, len(indices), sent, undelivered)


def finish(current: Run, planned: int, sent: Sequence[str], undelivered: Sequence[Undelivered]) -> int:
    """Log the run's summary; forget the run only when all of it was delivered.

    Raises DeliveryError (exit 1) naming the undelivered images: a restart resumes the same run
    and sends them again under the same IDs.
    """
    summary = (
        f"run {current.id}: sent {len(sent)} of {planned} images, delivered {len(sent) - len(undelivered)}"
    )
    if undelivered:
        raise DeliveryError(
            f"{summary}, {len(undelivered)} not delivered: {name_undelivered(current, undelivered)}; "
            f"a restart of run {current.id} sends them again under the same IDs"
        )
    if len(sent) < planned:
        log.info(
            "%s; stopped before the end: a restart resumes run %s with the same IDs", summary, current.id
        )
        return 0
    current.finish()
    log.info("%s; run finished, the next start begins a new run with new IDs", summary)
    return 0


def name_undelivered(current: Run, undelivered: Sequence[Undelivered]) -> str:
    """The first IDs and their errors; all of them written to a file when there are more."""
    named = ", ".join(f"{as_text(u.key)} ({u.error.name()})" for u in undelivered[:LISTED_IDS])
    if len(undelivered) <= LISTED_IDS:
        return named
    more = f"{named} and {len(undelivered) - LISTED_IDS} more"
    lines = "".join(f"{as_text(u.key)}\t{u.error.name()}\t{u.error.str()}\n" for u in undelivered)
    try:
        current.undelivered_file.parent.mkdir(parents=True, exist_ok=True)
        current.undelivered_file.write_text(lines, encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write the undelivered IDs to %s: %s", current.undelivered_file, exc)
        return more
    return f"{more} (all in {current.undelivered_file})"
