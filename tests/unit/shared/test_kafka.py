"""librdkafka's own lines, from real clients at a port where nothing listens (no broker needed):
they come through Python logging under one logger, without a line per reconnect."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Consumer

from iot_shared.kafka import as_text, base_config, wait_for_topics
from iot_shared.lifecycle import StopFlag
from iot_shared.logs import LIBRDKAFKA
from iot_shared.settings import ServiceSettings

CLOSED = "127.0.0.1:1"  # every connection refused at once: librdkafka retries about 20 times a second
AT_MOST = 3  # lines in a few seconds; one per reconnect would be 40 or more


def closed_port() -> ServiceSettings:
    return ServiceSettings(kafka_bootstrap_servers=CLOSED)


def librdkafka_lines(caplog: pytest.LogCaptureFixture, client: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LIBRDKAFKA.name and f"[{client}#" in r.getMessage()]


def test_the_startup_wait_logs_a_refused_broker_through_python_logging_without_a_flood(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(TimeoutError, match=f"no broker answers at IOT_KAFKA_BOOTSTRAP_SERVERS={CLOSED}"):
        wait_for_topics(closed_port(), ["iot-topic"], StopFlag(), timeout=2.0)
    lines = librdkafka_lines(caplog, "iot-startup")
    assert any(r.levelno == logging.ERROR and "Connection refused" in r.getMessage() for r in lines)
    assert len(lines) <= AT_MOST, [r.getMessage() for r in lines]
    assert "|FAIL|" not in capfd.readouterr().err  # no raw librdkafka line on stderr


def test_a_consumer_serves_librdkafka_lines_from_consume(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    consumer = Consumer(base_config(closed_port(), "iot-logtest") | {"group.id": "iot-logtest"})
    try:
        consumer.subscribe(["iot-topic"])
        deadline = time.monotonic() + 10.0
        while not librdkafka_lines(caplog, "iot-logtest") and time.monotonic() < deadline:
            consumer.consume(10, 0.1)
        assert librdkafka_lines(caplog, "iot-logtest"), "no librdkafka line came through logging"
        more = time.monotonic() + 2.0  # librdkafka keeps reconnecting meanwhile
        while time.monotonic() < more:
            consumer.consume(10, 0.1)
    finally:
        consumer.close()
    lines = librdkafka_lines(caplog, "iot-logtest")
    assert len(lines) <= AT_MOST, [r.getMessage() for r in lines]


def test_keys_and_header_values_read_as_text_whatever_they_hold() -> None:
    assert as_text(b"9f1c") == as_text("9f1c") == "9f1c"
    assert as_text(b"bad\xff") == "bad\ufffd"
    assert as_text(None) == ""
