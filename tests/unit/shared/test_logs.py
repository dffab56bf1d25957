"""RepeatFilter: librdkafka's repeated lines shown once per window, then with a count."""

from __future__ import annotations

import logging

from iot_shared.logs import LIBRDKAFKA, RepeatFilter

BROKER = "127.0.0.1:1/bootstrap"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def line(text: str, client: str = "iot-startup#producer-1") -> logging.LogRecord:
    """A record as confluent-kafka logs one of librdkafka's lines."""
    args = ("FAIL", client, f"[thrd:{BROKER}]: {BROKER}: {text}")
    return logging.LogRecord(LIBRDKAFKA.name, logging.ERROR, __file__, 0, "%s [%s] %s", args, None)


def refused(
    tail: str = "after 0ms in state CONNECT", client: str = "iot-startup#producer-1"
) -> logging.LogRecord:
    return line(f"Connect to ipv4#127.0.0.1:1 failed: Connection refused ({tail})", client)


def test_a_repeated_line_is_shown_once_per_window_then_with_how_many_were_held_back() -> None:
    clock = Clock()
    repeats = RepeatFilter(30.0, clock)
    assert repeats.filter(refused())
    for i in range(1, 600):  # librdkafka's pace against a closed port: every 50 ms
        clock.now = i * 0.05
        assert not repeats.filter(refused(f"after {i % 3}ms in state CONNECT"))
    clock.now = 30.0
    shown = refused("after 2ms in state CONNECT, 1 identical error(s) suppressed")
    assert repeats.filter(shown)
    assert shown.getMessage() == (
        f"FAIL [iot-startup#producer-1] [thrd:{BROKER}]: {BROKER}: Connect to ipv4#127.0.0.1:1 failed: "
        "Connection refused (after 2ms in state CONNECT, 1 identical error(s) suppressed) "
        "(and 599 more like it in the last 30s)"
    )
    clock.now = 31.0
    assert not repeats.filter(refused())


def test_a_different_failure_or_client_is_shown_at_once() -> None:
    repeats = RepeatFilter(30.0, Clock())
    assert repeats.filter(refused())
    assert repeats.filter(line("SSL handshake failed: connecting to a PLAINTEXT broker listener?"))
    assert repeats.filter(refused(client="iot-sink#consumer-2"))
    assert not repeats.filter(refused())


def test_a_line_seen_once_in_a_while_is_shown_every_time_unchanged() -> None:
    clock = Clock()
    repeats = RepeatFilter(30.0, clock)
    for minute in range(3):
        clock.now = minute * 60.0
        record = refused()
        assert repeats.filter(record)
        assert "more like it" not in record.getMessage()


def test_librdkafka_s_logger_holds_repeats_back() -> None:
    assert any(isinstance(f, RepeatFilter) for f in LIBRDKAFKA.filters)
