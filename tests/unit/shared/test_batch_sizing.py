"""Adaptive micro-batching: small batches while the service keeps up, large ones when it is behind."""

from __future__ import annotations

from confluent_kafka import TIMESTAMP_CREATE_TIME, Message
from prometheus_client import REGISTRY

from iot_shared.batch_sizing import BatchSizer

NOW = 1_000.0


def records(*ages_ms: float) -> list[Message]:
    """Records whose producer timestamps are these many milliseconds before NOW."""
    return [
        Message(topic="t", partition=0, offset=i, timestamp=(TIMESTAMP_CREATE_TIME, int(NOW * 1000 - age)))
        for i, age in enumerate(ages_ms)
    ]


def sizer(target_ms: float = 50, cost_ms: float | None = 2.0, max_batch: int = 64) -> BatchSizer:
    s = BatchSizer("unit-sizer", max_batch, target_ms / 1000, clock=lambda: NOW)
    if cost_ms is not None:
        s.handled(10, 10 * cost_ms / 1000)
    return s


def test_while_keeping_up_a_batch_holds_what_fits_in_the_rest_of_the_target() -> None:
    s = sizer(target_ms=50, cost_ms=2.0)
    s.consumed(records(10, 5))  # the oldest is 10 ms old: 40 ms left at 2 ms a record
    assert s.limit == 20
    assert REGISTRY.get_sample_value("iot_consumer_batch_limit", {"service": "unit-sizer"}) == 20


def test_behind_the_target_batches_grow_to_the_maximum_then_shrink_when_caught_up() -> None:
    s = sizer(target_ms=50, cost_ms=2.0, max_batch=64)
    s.consumed(records(900, 10))  # a backlog: latency is lost already, throughput first
    assert s.limit == 64
    s.consumed(records(2))
    assert s.limit == 24


def test_a_record_always_fits_and_the_cost_follows_recent_batches() -> None:
    s = sizer(target_ms=50, cost_ms=45.0)
    s.consumed(records(3))
    assert s.limit == 1
    for _ in range(30):  # the service got faster (e.g. the machine is quiet again)
        s.handled(64, 64 * 0.001)
    s.consumed(records(10))
    assert 36 <= s.limit <= 40  # 40 ms left at about 1 ms a record


def test_without_a_target_or_a_measured_cost_or_timestamps_batches_go_up_to_the_maximum() -> None:
    assert sizer(target_ms=0).limit == 64
    no_target = sizer(target_ms=0)
    no_target.consumed(records(1))
    assert no_target.limit == 64
    unmeasured = sizer(cost_ms=None)
    unmeasured.consumed(records(1))
    assert unmeasured.limit == 64
    untimed = sizer()
    untimed.consumed([Message(topic="t", partition=0, offset=0)])
    assert untimed.limit == 64
