from __future__ import annotations

import json

from prometheus_client import REGISTRY

from iot_shared.metrics import record_consumer_stats


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
