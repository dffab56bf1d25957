"""run_service: how a service ends when stopped before it was ready; run_consumer: its readiness
and the order it shuts down in."""

from __future__ import annotations

import logging

import pytest

from iot_shared import service
from iot_shared.consumer import GroupMember
from iot_shared.heartbeat import Heartbeat
from iot_shared.http_server import Probe
from iot_shared.lifecycle import StopFlag, StoppedWhileWaitingError
from iot_shared.service import run_service
from iot_shared.settings import ConsumerSettings, ServiceSettings
from tests.unit.shared.fakes import FakeConsumer, RecordingPublisher


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


def test_a_consumer_is_ready_once_its_store_is_and_leaves_its_group_before_the_last_flush(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[str] = []

    class Publisher(RecordingPublisher):
        def flush(self, timeout: float) -> list[object]:
            closed.append("flush")
            return super().flush(timeout)

    class Consumer(FakeConsumer):
        def close(self) -> None:
            closed.append("leave the group")

    monkeypatch.setattr(service, "wait_for_topics", lambda *args: None)
    monkeypatch.setattr(service, "Publisher", lambda *args: Publisher())
    monkeypatch.setattr(service, "join_group", lambda _s, name, _t: GroupMember(Consumer({}), name))
    settings = ConsumerSettings(group_id="sink", max_batch=10)
    store_up = [False]
    probe, stop = Probe("waiting for CouchDB"), StopFlag()
    stop.set()  # the loop returns at once: what matters is what it leaves behind

    service.run_consumer(
        settings,
        stop,
        probe,
        "sink",
        consumes=["images"],
        produces=[],
        build_loop=lambda member, publisher: service.loop_from_settings(
            settings, member, publisher, decode=lambda record: record, handle=lambda batch: None
        ),
        depends_on=lambda: (store_up[0], "couchdb not ready"),
    )
    assert probe() == (False, "couchdb not ready")
    store_up[0] = True
    assert probe() == (True, "kafka reachable")
    assert closed == ["leave the group", "flush"]


def test_the_last_flush_on_the_way_out_is_announced_to_the_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    heartbeat = Heartbeat("unit-service", stall_after=60.0, clock=lambda: now[0])
    seen: list[bool] = []

    class Publisher(RecordingPublisher):
        def flush(self, timeout: float) -> list[object]:
            now[0] += timeout + 59  # the broker is away: the whole timeout, and then some
            seen.append(heartbeat.liveness()[0])
            return super().flush(timeout)

    monkeypatch.setattr(service, "wait_for_topics", lambda *args: None)
    monkeypatch.setattr(service, "Publisher", lambda *args: Publisher())
    monkeypatch.setattr(service, "join_group", lambda _s, name, _t: GroupMember(FakeConsumer({}), name))
    settings = ConsumerSettings(group_id="sink", max_batch=10, delivery_timeout_seconds=300)
    stop = StopFlag()
    stop.set()
    service.run_consumer(
        settings,
        stop,
        Probe("starting"),
        "sink",
        consumes=["images"],
        produces=[],
        build_loop=lambda member, publisher: service.loop_from_settings(
            settings, member, publisher, lambda record: record, lambda batch: None, heartbeat=heartbeat
        ),
    )
    assert seen == [True]
