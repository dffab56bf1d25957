from __future__ import annotations

from typing import Any

import pytest

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
