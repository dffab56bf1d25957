"""Metrics shared by every service (`http_server` serves them on /metrics).

Names follow Prometheus practice: prefix `iot_`, base units, counters end in `_total`.
Service-specific metrics live in each service's own `metrics.py`.
"""

from __future__ import annotations

import json
from collections.abc import Container

from prometheus_client import Counter, Gauge, Info

BUILD_INFO = Info("iot_build", "Version of the running service and the model it serves")
CONSUMER_LAG = Gauge(
    "iot_consumer_lag_messages",
    "Messages between a partition's high watermark and the group's position",
    ["service", "topic", "partition"],
)
CONSUMER_LAG_AGE = Gauge(
    "iot_consumer_lag_seconds",
    "Age of the oldest record of the last batch read (since it was produced): how old the oldest "
    "unread image is; 0 once the service waits for new ones. Kafka deletes what outlives retention",
    ["service", "topic"],
)
DELIVERED = Counter(
    "iot_kafka_delivered_messages",
    "Messages the broker acknowledged (acks=all)",
    ["service", "topic"],
)
DELIVERY_FAILURES = Counter(
    "iot_kafka_delivery_failures",
    "Messages the broker did not acknowledge in time",
    ["service", "topic"],
)
CONSUMED = Counter("iot_kafka_consumed_messages", "Records consumed, valid or not", ["service", "topic"])
DEAD_LETTERS = Counter("iot_dlq_messages", "Messages sent to the dead-letter topic", ["service", "reason"])
REBALANCES = Counter(
    "iot_consumer_rebalances",
    "Partitions assigned, revoked or lost (group moved on)",
    ["service", "event"],
)
CONSUMER_PAUSED = Gauge(
    "iot_consumer_paused",
    "1 while the service holds its partitions back because it cannot deliver its output",
    ["service"],
)
LOOP_LAST_BEAT = Gauge(
    "iot_loop_last_beat_timestamp_seconds",
    "When the service's main loop last went round (Unix time): each poll or batch, each image sent, "
    "every second of a planned wait. No series before the loop starts; /healthz fails once it is "
    "older than IOT_STALL_TIMEOUT_SECONDS (a flush's announced wait aside)",
    ["service"],
)
BATCH_LIMIT = Gauge(
    "iot_consumer_batch_limit",
    "Most records the next batch may hold: small while the service keeps up with "
    "IOT_LATENCY_TARGET_MS, IOT_MAX_BATCH when it is behind",
    ["service"],
)

# Latency buckets from 0.25 ms to 30 s: per-image inference is sub-millisecond; end to end is tens
# of milliseconds when all is well (finely resolved, for its p99), seconds under a backlog.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


def record_consumer_stats(service: str, stats_json: str, assigned: Container[tuple[str, int]]) -> None:
    """librdkafka `stats_cb`: export the consumer lag of each partition assigned to this member.

    Statistics can lag behind a rebalance, so a partition given up since is skipped: two members
    must never both report lag for one partition.
    """
    stats = json.loads(stats_json)
    for topic, tstats in stats.get("topics", {}).items():
        for partition, pstats in tstats.get("partitions", {}).items():
            lag = pstats.get("consumer_lag", -1)
            # -1 = unknown (no position yet); librdkafka's internal partition is "-1".
            if partition == "-1" or lag < 0 or (topic, int(partition)) not in assigned:
                continue
            CONSUMER_LAG.labels(service, topic, partition).set(lag)
