"""run_service: how a service ends when stopped before it was ready."""

from __future__ import annotations

import logging

import pytest

from iot_shared import service
from iot_shared.lifecycle import StopFlag, StoppedWhileWaitingError
from iot_shared.service import run_service
from iot_shared.settings import ServiceSettings


def test_a_service_stopped_while_waiting_exits_0_saying_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(StopFlag, "install", lambda self: self)  # pytest keeps its signal handlers
    monkeypatch.setattr(service, "configure_logging", lambda level: None)  # and caplog its handler
    said = "stopped while waiting for Kafka, after 60s: no broker answers"

    def run(settings: ServiceSettings, stop: StopFlag) -> int:
        raise StoppedWhileWaitingError(said)

    caplog.set_level(logging.INFO)
    assert run_service("iot-test", ServiceSettings, [], run, "0.0") == 0
    assert ("iot-test", logging.INFO, said) in caplog.record_tuples
