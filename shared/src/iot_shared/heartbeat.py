"""The main loop's sign of life, which /healthz reads: a loop that has stopped going round (hung
in a call that never returns) answers 503, so whatever watches the container can restart it.

The loop beats each time round: each poll or batch of a consumer, whether or not anything came
and also while it holds its partitions back (it still polls), and each image of the producer.
A wait it plans is no stall: a long one is cut into slices that beat (`wait`), and a bounded one
is announced with the beat before it (`beat(then_waits=...)`, a flush up to its timeout), so
the limit only has to cover what no setting bounds (see `LoopSettings.stall_timeout_seconds`).
An outage of Kafka or CouchDB never stops the beats: the loop polls and retries with time-outs.

Before the first beat (settings, loading the model, waiting for the broker) the loop has not
started, and /healthz answers 200: a slow start is /readyz's business.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from iot_shared.lifecycle import StopFlag
from iot_shared.metrics import LOOP_LAST_BEAT

# How often a planned wait beats: well inside any stall limit, and a fresh gauge for Prometheus.
BEAT_SECONDS = 1.0


class Heartbeat:
    """When the main loop last went round; stalled once that is `stall_after` seconds ago (plus
    the wait announced with the last beat).

    Beaten by the loop's thread, read by the HTTP server's: the last beat is one tuple, replaced
    whole, so a reader never sees half of it.
    """

    def __init__(
        self,
        service: str | None = None,
        stall_after: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """SERVICE labels the `iot_loop_last_beat_timestamp_seconds` gauge (None: no gauge, a
        heartbeat nobody watches, as in tests); CLOCK is monotonic seconds."""
        self.service = service
        self.stall_after = stall_after
        self._clock = clock
        self._last: tuple[float, float] | None = None  # (when, the wait announced with it)

    def beat(self, then_waits: float = 0.0) -> None:
        """The loop went round. THEN_WAITS: seconds of a bounded wait that starts now (a flush
        up to its timeout), which the next beat may come that much later for."""
        self._last = (self._clock(), max(0.0, then_waits))
        if self.service is not None:
            LOOP_LAST_BEAT.labels(self.service).set(time.time())

    def wait(self, stop: StopFlag, seconds: float) -> bool:
        """Beat, then `stop.wait(seconds)` in slices of BEAT_SECONDS with a beat after each: a
        loop that waits (the producer between two images, however far apart) is alive. True
        when stopping.

        The slices are counted, not timed, so the whole may overrun `seconds` by a few
        milliseconds; the producer's schedule computes each wait from its fixed start, so that
        never adds up.
        """
        self.beat()
        while seconds > BEAT_SECONDS:
            if stop.wait(BEAT_SECONDS):
                return True
            self.beat()
            seconds -= BEAT_SECONDS
        return stop.wait(seconds)

    def liveness(self) -> tuple[bool, str]:
        """For /healthz: (False, why) once the loop is overdue; (True, ...) before it starts."""
        last = self._last
        if last is None:
            return True, "main loop not started yet"
        when, announced = last
        silent = self._clock() - when
        if silent > self.stall_after + announced:
            return False, f"main loop stalled for {silent:.0f} s (limit {self.stall_after:g} s)"
        return True, f"main loop went round {silent:.0f} s ago"
