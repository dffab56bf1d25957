"""How many records the next batch may hold: adaptive micro-batching from a latency target.

Two regimes, chosen by the age of what was just consumed (its Kafka timestamp):

- **Keeping up** (records are younger than the target): a batch is capped at what the service
  handles within the rest of the target, from its measured cost per record. At camera rates the
  batch is whatever has arrived, usually one record: latency stays low.
- **Behind** (records are older than the target): latency is lost to the backlog already, so
  batches grow to `max_batch`, where each record costs least: the backlog clears fastest.

The cap only bounds what is taken; whether a batch waits for more is `IOT_MAX_WAIT_MS` (see
`BatchLoop.poll_batch`), and `time_left` keeps that wait within the target. The age compares
this host's clock with the producer's: a skewed clock shifts the switch between regimes and the
length of that wait; it never loses a record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from iot_shared.metrics import BATCH_LIMIT

# Weight of the newest batch in the cost estimate: a few batches follow a change in load.
COST_SMOOTHING = 0.2


@dataclass
class BatchSizer:
    service: str
    max_batch: int
    target_seconds: float  # 0 = no target: always up to max_batch
    clock: Callable[[], float] = time.time
    limit: int = field(init=False)
    seconds_per_record: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._set(self.max_batch)

    def consumed(self, records: Sequence[Message]) -> None:
        """Choose the next cap from how old the oldest of these records is."""
        budget = self._budget(records)
        if budget is None or self.seconds_per_record is None:
            return
        if budget < self.seconds_per_record:  # behind: throughput first
            self._set(self.max_batch)
        else:
            self._set(int(budget / self.seconds_per_record))

    def time_left(self, records: Sequence[Message]) -> float:
        """Seconds the oldest of `records` may still wait before its batch must be handled to meet
        the target (unbounded without a target, 0 once past it)."""
        budget = self._budget(records)
        if budget is None:
            return float("inf")
        return max(0.0, budget - (self.seconds_per_record or 0.0))

    def handled(self, records: int, seconds: float) -> None:
        """Learn the cost of one record from a finished batch (handled, output acknowledged)."""
        if records <= 0:
            return
        cost = seconds / records
        previous = self.seconds_per_record
        self.seconds_per_record = cost if previous is None else previous + COST_SMOOTHING * (cost - previous)

    def _budget(self, records: Sequence[Message]) -> float | None:
        """The target less the age of the oldest of `records`; None without a target or a timestamp."""
        oldest = _oldest_stamp(records)
        if not self.target_seconds or oldest is None:
            return None
        return self.target_seconds - (self.clock() - oldest)

    def _set(self, limit: int) -> None:
        self.limit = max(1, min(self.max_batch, limit))
        BATCH_LIMIT.labels(self.service).set(self.limit)


def _oldest_stamp(records: Sequence[Message]) -> float | None:
    """The earliest Kafka timestamp among `records`, in epoch seconds; None if none has one."""
    stamps = [ts for kind, ts in (r.timestamp() for r in records) if kind != TIMESTAMP_NOT_AVAILABLE]
    return min(stamps) / 1000 if stamps else None
