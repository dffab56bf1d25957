"""The at-least-once loop both consumers run: consume → decode → handle → flush → commit.

A service supplies only `decode` (one record to a message) and `handle` (a batch of messages to
its output). The loop guarantees the rest:

- Decoding never stops the service: a record that is not a valid message goes to the
  dead-letter topic with its reason; one that fails in a way nobody foresaw goes there too, as
  `undecodable`, with the exception's type in `dlq.detail`.
- A batch's offsets are stored for commit only after `handle` returned and everything the
  batch produced (outputs and dead letters) is acknowledged by the broker.
- When that fails (`handle` raised `RetryLaterError`, or a delivery failed), the member holds its
  partitions back: paused and rewound to the batch's first offsets, it keeps polling, so it stays
  in the group however long the outage lasts; after a back-off it resumes and the batch is
  consumed again.
- Each time round (each poll, a batch or not, held back or not) it beats its `Heartbeat`, and
  announces the wait of each flush, so /healthz tells a hung loop from a slow or held-back one.

Everything runs on the caller's thread: decoding on a second thread, while the forward pass
runs, bought nothing measurable (docs/benchmark.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from confluent_kafka import Message

from iot_shared.batch_sizing import BatchSizer
from iot_shared.consumer import GroupMember
from iot_shared.dead_letters import DeadLetters
from iot_shared.errors import InvalidMessageError, PipelineError, summary
from iot_shared.heartbeat import Heartbeat
from iot_shared.lifecycle import StopFlag, backoff_delays
from iot_shared.publisher import Publisher

log = logging.getLogger(__name__)

T = TypeVar("T")
# How long one poll blocks on a quiet stream: bounds how late a stop or a resume is noticed.
IDLE_POLL_SECONDS = 0.5


class RetryLaterError(PipelineError):
    """The batch could not be finished now (its output is unreachable); consume it again later."""


@dataclass
class BatchLoop(Generic[T]):
    member: GroupMember
    publisher: Publisher
    dead_letters: DeadLetters
    decode: Callable[[Message], T]
    handle: Callable[[list[T]], None]
    max_batch: int
    max_fill_wait_seconds: float
    delivery_timeout_seconds: float
    latency_target_seconds: float = 0.0  # see batch_sizing; 0 = batches up to max_batch always
    # Whether a filling batch has all it waits for (the sink: each image's prediction and back).
    complete: Callable[[list[Message]], bool] = lambda _records: False
    backoff: Callable[[], Callable[[], float]] = backoff_delays
    heartbeat: Heartbeat = field(default_factory=Heartbeat)  # what /healthz reads
    sizer: BatchSizer = field(init=False)
    _next_delay: Callable[[], float] = field(init=False)

    def __post_init__(self) -> None:
        self._next_delay = self.backoff()
        self.sizer = BatchSizer(self.member.service, self.max_batch, self.latency_target_seconds)

    def run(self, stop: StopFlag, between: Callable[[], None] = lambda: None) -> None:
        """Steps until STOP; BETWEEN runs after each (a batch, or an idle poll)."""
        while not stop:
            self.step()
            self.heartbeat.beat()  # BETWEEN may take a while of its own (the sink's sweep)
            between()

    def step(self) -> bool | None:
        """One batch, if there is one: True = finished, False = held back, None = nothing came."""
        self.heartbeat.beat()
        self.member.raise_if_fatal()
        records = self.poll_batch(min(IDLE_POLL_SECONDS, self.member.resume_if_due()))
        if not records:
            self.publisher.poll()  # librdkafka's log lines, while nothing is produced
            return None
        self.sizer.consumed(records)
        return self._finish(records)

    def poll_batch(self, idle_wait: float) -> list[Message]:
        """The next batch, sized by what is waiting: one record when the stream is quiet (low
        latency), up to the sizer's limit under a backlog (throughput).

        librdkafka fetches in the background, so what it has already fetched is taken at once;
        only when nothing is there does the loop block, for the first record, up to `idle_wait`.
        Then the batch may wait for more, up to `max_fill_wait_seconds` (0 = not at all) and never
        past the latency target, and no longer once `complete` says it has all it waits for.
        """
        limit = self.sizer.limit
        records = self.member.consume(limit, 0) or self.member.consume(1, idle_wait)
        if not records or not self.max_fill_wait_seconds:
            return records
        fill_wait = min(self.max_fill_wait_seconds, self.sizer.time_left(records))
        self.heartbeat.beat(then_waits=fill_wait)  # IOT_MAX_WAIT_MS has no upper bound
        deadline = time.monotonic() + fill_wait
        while len(records) < limit and not self.complete(records):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # One record ends the wait, so `complete` is asked again as soon as anything comes.
            if not (more := self.member.consume(1, remaining)):
                break
            records += more + self.member.consume(limit - len(records) - 1, 0)
        return records

    def _finish(self, records: list[Message]) -> bool:
        started = time.perf_counter()
        messages = self._decode_all(records)
        try:
            if messages:
                self.handle(messages)
            self.heartbeat.beat(then_waits=self.delivery_timeout_seconds)
            failures = self.publisher.flush(self.delivery_timeout_seconds)
            if failures:
                raise RetryLaterError(f"{len(failures)} messages not acknowledged by the broker")
        except RetryLaterError as exc:
            self._hold_back(records, exc)
            return False
        self._next_delay = self.backoff()
        self.sizer.handled(len(records), time.perf_counter() - started)
        self.member.finished(records)
        return True

    def readiness(self) -> tuple[bool, str]:
        """For /readyz: the consumer can go on and a broker answers."""
        if self.member.fatal is not None:
            return False, f"kafka consumer failed: {self.member.fatal.str()}"
        return self.publisher.readiness()

    def _decode_all(self, records: Sequence[Message]) -> list[T]:
        """The valid messages; each invalid record goes to the dead-letter topic with its error."""
        messages: list[T] = []
        for record in records:
            try:
                messages.append(self.decode(record))
            except InvalidMessageError as exc:
                self.dead_letters.send(record, exc)
            except Exception as exc:  # one record must never stop the service
                error = InvalidMessageError("undecodable", f"{type(exc).__name__}: {exc}")
                self.dead_letters.send(record, error)
        return messages

    def _hold_back(self, records: Sequence[Message], exc: BaseException) -> None:
        delay = self._next_delay()
        log.warning(
            "batch of %d not finished (%s); holding back, again in %.1fs", len(records), summary(exc), delay
        )
        self.member.hold_back(records, delay)
