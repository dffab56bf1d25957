from __future__ import annotations

import json
from typing import Any

from prometheus_client import REGISTRY

from iot_shared.metrics import health_app, record_consumer_stats


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


def test_consumer_lag_comes_from_librdkafka_statistics() -> None:
    stats = {
        "topics": {
            "iot-topic": {
                "partitions": {
                    "0": {"consumer_lag": 42},
                    "1": {"consumer_lag": -1},  # no position yet: no series
                    "2": {"consumer_lag": 5},  # not assigned to this member: no series
                    "-1": {"consumer_lag": 0},  # librdkafka's internal partition
                }
            }
        }
    }
    record_consumer_stats("unit", json.dumps(stats), {("iot-topic", 0), ("iot-topic", 1)})

    def lag(partition: str) -> float | None:
        labels = {"service": "unit", "topic": "iot-topic", "partition": partition}
        return REGISTRY.get_sample_value("iot_consumer_lag_messages", labels)

    assert lag("0") == 42
    assert lag("1") is None and lag("2") is None and lag("-1") is None
