from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest

from iot_shared.heartbeat import Heartbeat
from iot_shared.http_server import PortTakenError, health_app, serve_http
from testbed.ports import free_port


def call(app: Any, path: str) -> tuple[str, bytes]:
    status: list[str] = []
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda s, h: status.append(s)))
    return status[0], body


def test_readyz_reports_not_ready_with_503_and_the_reason() -> None:
    app = health_app(lambda: (False, "kafka unreachable"))
    assert call(app, "/healthz")[0] == "200 OK"
    status, body = call(app, "/readyz")
    assert status.startswith("503") and b"kafka unreachable" in body
    assert call(health_app(lambda: (True, "ok")), "/readyz")[0] == "200 OK"


def test_healthz_follows_the_main_loops_heartbeat_not_the_http_thread() -> None:
    now = [0.0]
    heartbeat = Heartbeat("unit-http", stall_after=120.0, clock=lambda: now[0])
    app = health_app(lambda: (False, "kafka unreachable"), heartbeat.liveness)
    assert call(app, "/healthz") == ("200 OK", b"main loop not started yet\n")
    heartbeat.beat()
    now[0] += 100
    assert call(app, "/healthz") == ("200 OK", b"main loop went round 100 s ago\n")  # not ready: alive
    now[0] += 21  # no beat for 121 s: hung, though this thread still answers
    assert call(app, "/healthz") == (
        "503 Service Unavailable",
        b"main loop stalled for 121 s (limit 120 s)\n",
    )
    heartbeat.beat()
    assert call(app, "/healthz")[0] == "200 OK"


def test_healthz_over_http_answers_503_when_stalled() -> None:
    now = [0.0]
    heartbeat = Heartbeat(stall_after=1.0, clock=lambda: now[0])
    heartbeat.beat()
    now[0] += 2
    port = free_port()
    server = serve_http(port, lambda: (True, "ok"), "127.0.0.1", heartbeat.liveness)
    assert server is not None
    try:
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert answer.value.code == 503 and answer.value.read() == b"main loop stalled for 2 s (limit 1 s)\n"
    finally:
        server.shutdown()


def test_metrics_are_served_in_prometheus_format() -> None:
    status, body = call(health_app(lambda: (True, "ok")), "/metrics")
    assert status == "200 OK"
    assert b"# TYPE iot_kafka_delivered_messages_total counter" in body
    assert call(health_app(lambda: (True, "ok")), "/nope")[0].startswith("404")


def test_an_address_not_of_this_host_is_a_bad_setting_naming_it() -> None:
    with pytest.raises(PortTakenError, match=r"IOT_METRICS_ADDRESS=192\.0\.2\.1, IOT_METRICS_PORT="):
        serve_http(free_port(), lambda: (True, "ok"), host="192.0.2.1")  # TEST-NET-1: nobody's


def test_port_0_serves_nothing() -> None:
    assert serve_http(0, lambda: (True, "ok"), host="127.0.0.1") is None
