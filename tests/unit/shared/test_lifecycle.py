"""wait_until: what it says when the wait ends, by a stop or by its timeout."""

from __future__ import annotations

import re
import threading
import time

import pytest

from iot_shared.lifecycle import StopFlag, StoppedWhileWaitingError, wait_until


def refused() -> None:
    raise ConnectionError("no broker answers")


def test_a_stop_during_the_wait_says_so_with_the_time_really_waited() -> None:
    stop = StopFlag()
    started = time.monotonic()
    threading.Timer(1.5, stop.set).start()
    with pytest.raises(StoppedWhileWaitingError) as caught:
        wait_until("Kafka", refused, stop, timeout=120.0)
    waited = time.monotonic() - started
    message = str(caught.value)
    said = re.fullmatch(r"stopped while waiting for Kafka, after (\d+)s: no broker answers", message)
    assert said, message
    assert 1.0 <= int(said.group(1)) <= waited + 0.5


def test_a_stop_ends_the_wait_at_once_without_another_attempt() -> None:
    stop = StopFlag()
    calls = 0

    def attempt() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            stop.set()  # as SIGTERM does, here while the attempt runs
        refused()

    with pytest.raises(StoppedWhileWaitingError, match=r"^stopped while waiting for CouchDB, after"):
        wait_until("CouchDB", attempt, stop, timeout=120.0)
    assert calls == 2


def test_a_wait_that_times_out_says_how_long_it_waited() -> None:
    with pytest.raises(TimeoutError, match=r"^Kafka not ready after 0s: no broker answers$"):
        wait_until("Kafka", refused, StopFlag(), timeout=0.3)
