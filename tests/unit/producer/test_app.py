from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import KafkaError

from iot_producer.app import LISTED_IDS, finish, image_message, schedule
from iot_producer.cifar import Dataset
from iot_producer.runs import RUN_ID_FILE, open_run
from iot_shared.errors import DeliveryError
from iot_shared.heartbeat import BEAT_SECONDS, Heartbeat
from iot_shared.lifecycle import StopFlag
from iot_shared.publisher import Undelivered
from iot_shared.run_plan import image_id
from iot_shared.schema import ImageMessage


def test_messages_carry_the_label_the_pixels_and_the_id() -> None:
    images = np.arange(2 * 32 * 32 * 3, dtype=np.uint32).astype(np.uint8).reshape(2, 32, 32, 3)
    data = Dataset(np.array([3, 8], dtype=np.uint8), images)
    ids = [image_id("run", "test", i, i) for i in range(2)]
    first, second = image_message(data, 0, "cam", ids[0]), image_message(data, 1, "cam", ids[1])
    assert (first.ground_truth, second.ground_truth) == ("cat", "ship")
    assert [first.id, second.id] == ids
    np.testing.assert_array_equal(ImageMessage.decode(second.encode()).pixels, images[1])


def test_schedule_stops_early_when_asked() -> None:
    stop = StopFlag()
    sent = []
    for i in schedule(6, 3600.0, stop, Heartbeat()):
        sent.append(i)
        stop.set()  # a SIGTERM after the first image must not wait an hour
    assert sent == [0]


class RecordingStop(StopFlag):
    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return False


def test_full_speed_schedule_never_waits() -> None:
    stop = RecordingStop()
    assert list(schedule(1000, 0.0, stop, Heartbeat())) == list(range(1000))
    assert max(stop.waits) <= 0


def test_paced_schedule_keeps_a_fixed_clock() -> None:
    stop = RecordingStop()
    waited = []  # before each image: the waits since the last, in the heartbeat's slices
    for _ in schedule(4, 10.0, stop, Heartbeat()):
        waited.append(sum(stop.waits))
        stop.waits.clear()
    # Image i is due i*10 s after the start, whatever the time spent sending: no drift. (These
    # waits return at once, so each is the whole time from the start.)
    assert [round(w, -1) for w in waited] == [0.0, 10.0, 20.0, 30.0]


class ClockedStop(StopFlag):
    """A stop flag whose waits move a fake clock instead of sleeping, asking the heartbeat
    how the service looks to /healthz at each moment."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.heartbeat = Heartbeat("producer-test", stall_after=30.0, clock=lambda: self.now)
        self.health: list[bool] = []

    def wait(self, seconds: float) -> bool:
        self.now += max(0.0, seconds)
        self.health.append(self.heartbeat.liveness()[0])
        return False


def test_the_producer_beats_while_it_waits_for_the_next_image() -> None:
    stop = ClockedStop()
    # An hour between images, a stall limit of 30 s: the wait is the loop's, not a hang.
    assert list(schedule(2, 3600.0, stop, stop.heartbeat)) == [0, 1]
    assert all(stop.health) and len(stop.health) >= 3600 / BEAT_SECONDS
    assert stop.heartbeat.liveness()[0]
    # Once the images stop coming (hung in a send, say), /healthz says so.
    stop.now += 31
    alive, why = stop.heartbeat.liveness()
    assert not alive and why.startswith("main loop stalled for 3") and why.endswith("(limit 30 s)")


# --- the end of a run -----------------------------------------------------------------


def undelivered(ids: list[str]) -> list[Undelivered]:
    return [Undelivered("iot-topic", i, KafkaError(KafkaError._MSG_TIMED_OUT), 3) for i in ids]


def test_a_fully_delivered_run_is_forgotten(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = open_run(tmp_path)
    caplog.set_level("INFO")
    assert finish(run, 3, ["a", "b", "c"], []) == 0
    assert not (tmp_path / RUN_ID_FILE).exists()
    assert f"run {run.id}: sent 3 of 3 images, delivered 3" in caplog.text


def test_a_run_stopped_early_is_kept_for_the_next_start(tmp_path: Path) -> None:
    run = open_run(tmp_path)
    assert finish(run, 10, ["a", "b"], []) == 0  # SIGTERM: all that was sent got through
    assert open_run(tmp_path).id == run.id


def test_undelivered_images_are_named_and_the_run_is_kept(tmp_path: Path) -> None:
    run = open_run(tmp_path)
    with pytest.raises(DeliveryError) as raised:
        finish(run, 3, ["a", "b", "c"], undelivered(["b", "c"]))
    message = str(raised.value)
    assert (
        "sent 3 of 3 images, delivered 1, 2 not delivered: b (_MSG_TIMED_OUT), c (_MSG_TIMED_OUT)" in message
    )
    assert open_run(tmp_path).id == run.id and not run.undelivered_file.exists()


def test_a_long_list_of_undelivered_images_goes_to_a_file(tmp_path: Path) -> None:
    run = open_run(tmp_path)
    ids = [f"id-{i}" for i in range(LISTED_IDS + 5)]
    with pytest.raises(DeliveryError) as raised:
        finish(run, len(ids), ids, undelivered(ids))
    message = str(raised.value)
    assert f"id-{LISTED_IDS - 1} (_MSG_TIMED_OUT) and 5 more (all in {run.undelivered_file})" in message
    assert f"id-{LISTED_IDS}" not in message.replace(f"id-{LISTED_IDS - 1}", "")
    lines = run.undelivered_file.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ids
    # Delivered on the restart: the list goes with the run.
    assert finish(open_run(tmp_path), len(ids), ids, []) == 0
    assert not run.undelivered_file.exists()
