"""The heartbeat /healthz reads: alive while the main loop goes round, stalled once it stops."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from iot_shared.heartbeat import BEAT_SECONDS, Heartbeat
from iot_shared.lifecycle import StopFlag


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_alive_before_the_loop_starts_however_long_the_start_takes() -> None:
    clock = Clock()
    heartbeat = Heartbeat("unit-hb", stall_after=120.0, clock=clock)
    clock.now += 3600  # loading the model, waiting for the broker: /readyz's business
    assert heartbeat.liveness() == (True, "main loop not started yet")


def test_a_loop_that_beats_is_alive_and_one_that_stops_is_stalled_with_the_reason() -> None:
    clock = Clock()
    heartbeat = Heartbeat("unit-hb", stall_after=60.0, clock=clock)
    for _ in range(10):  # ten minutes of beats 50 s apart
        heartbeat.beat()
        clock.now += 50
        assert heartbeat.liveness() == (True, "main loop went round 50 s ago")
    clock.now += 10  # 60 s since the last beat: at the limit, not past it
    assert heartbeat.liveness()[0]
    clock.now += 33
    assert heartbeat.liveness() == (False, "main loop stalled for 93 s (limit 60 s)")
    heartbeat.beat()  # it went round after all
    assert heartbeat.liveness()[0]


def test_an_announced_wait_extends_the_limit_until_the_next_beat() -> None:
    clock = Clock()
    heartbeat = Heartbeat("unit-hb", stall_after=120.0, clock=clock)
    heartbeat.beat(then_waits=300.0)  # a flush of up to 300 s
    clock.now += 419
    assert heartbeat.liveness()[0]
    clock.now += 2
    assert heartbeat.liveness() == (False, "main loop stalled for 421 s (limit 120 s)")
    heartbeat.beat()  # the next beat announces nothing: the plain limit again
    clock.now += 121
    assert not heartbeat.liveness()[0]


def test_each_beat_sets_the_gauge_to_the_time_of_day() -> None:
    heartbeat = Heartbeat("unit-hb-gauge", stall_after=120.0)
    assert (
        REGISTRY.get_sample_value("iot_loop_last_beat_timestamp_seconds", {"service": "unit-hb-gauge"})
        is None
    )
    before = time.time()
    heartbeat.beat()
    value = REGISTRY.get_sample_value("iot_loop_last_beat_timestamp_seconds", {"service": "unit-hb-gauge"})
    assert value is not None and before <= value <= time.time()


class FakeStop(StopFlag):
    """Waits move the clock; each records whether the heartbeat looked alive meanwhile."""

    def __init__(self, clock: Clock, heartbeat: Heartbeat, stop_after: float = float("inf")) -> None:
        super().__init__()
        self.clock, self.heartbeat, self.stop_after = clock, heartbeat, stop_after
        self.waits: list[float] = []
        self.health: list[bool] = []

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.clock.now += max(0.0, seconds)
        self.health.append(self.heartbeat.liveness()[0])
        return sum(self.waits) >= self.stop_after


def test_a_long_wait_beats_in_slices_and_still_waits_it_all() -> None:
    clock = Clock()
    heartbeat = Heartbeat("unit-hb", stall_after=5.0, clock=clock)
    stop = FakeStop(clock, heartbeat)
    assert heartbeat.wait(stop, 600.5) is False
    assert sum(stop.waits) == 600.5 and max(stop.waits) <= BEAT_SECONDS
    assert all(stop.health)


def test_a_wait_ends_at_once_when_stopping() -> None:
    clock = Clock()
    heartbeat = Heartbeat("unit-hb", stall_after=5.0, clock=clock)
    stop = FakeStop(clock, heartbeat, stop_after=3)
    assert heartbeat.wait(stop, 3600.0) is True
    assert sum(stop.waits) == 3


def test_a_short_wait_is_one_wait_after_a_beat() -> None:
    clock = Clock()
    heartbeat = Heartbeat(stall_after=5.0, clock=clock)  # nobody's gauge
    stop = FakeStop(clock, heartbeat)
    assert heartbeat.wait(stop, -0.2) is False  # an image already late: no wait, but a beat
    assert stop.waits == [-0.2] and heartbeat.liveness() == (True, "main loop went round 0 s ago")
