from __future__ import annotations

import numpy as np

from iot_producer.app import choose_indices, image_message, schedule
from iot_producer.cifar import Dataset
from iot_shared.lifecycle import StopFlag
from iot_shared.schema import ImageMessage


def test_sequential_indices_start_where_asked_and_wrap() -> None:
    assert choose_indices(10, 4, "sequential", start=8).tolist() == [8, 9, 0, 1]


def test_count_zero_means_the_whole_split() -> None:
    assert choose_indices(5, 0, "sequential").tolist() == [0, 1, 2, 3, 4]


def test_random_order_is_reproducible_and_without_repeats() -> None:
    first = choose_indices(100, 50, "random", seed=7)
    assert first.tolist() == choose_indices(100, 50, "random", seed=7).tolist()
    assert len(set(first.tolist())) == 50
    assert first.tolist() != choose_indices(100, 50, "random", seed=8).tolist()


def test_messages_carry_the_label_the_pixels_and_a_unique_id() -> None:
    images = np.arange(2 * 32 * 32 * 3, dtype=np.uint32).astype(np.uint8).reshape(2, 32, 32, 3)
    data = Dataset(np.array([3, 8], dtype=np.uint8), images)
    first, second = image_message(data, 0, "cam"), image_message(data, 1, "cam")
    assert (first.ground_truth, second.ground_truth) == ("cat", "ship")
    assert first.id != second.id
    np.testing.assert_array_equal(ImageMessage.decode(second.encode()).pixels, images[1])


def test_schedule_stops_early_when_asked() -> None:
    stop = StopFlag()
    sent = []
    for i in schedule(6, 3600.0, stop):
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
    assert list(schedule(1000, 0.0, stop)) == list(range(1000))
    assert max(stop.waits) <= 0


def test_paced_schedule_keeps_a_fixed_clock() -> None:
    stop = RecordingStop()
    assert list(schedule(4, 10.0, stop)) == [0, 1, 2, 3]
    # Image i is due i*10 s after the start, whatever the time spent sending: no drift.
    assert [round(w, -1) for w in stop.waits] == [0.0, 10.0, 20.0, 30.0]
