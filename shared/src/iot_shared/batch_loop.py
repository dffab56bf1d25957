"""The at-least-once loop both consumers run: consume → decode → handle → flush → commit.

A service supplies only `decode` (one record to a message) and `handle` (a batch of messages to
its output). The loop guarantees the rest:

- Decoding never stops the service: a record that is not a valid message goes to the
  dead-letter topic with its reason; one that fails in a way nobody foresaw goes there too, as
  `undecodable`, with the exception's type in `dlq.detail`.
- A batch's offsets are committed only after `handle` returned and everything the batch
  produced (outputs and dead letters) is acknowledged by the broker.
- When that fails (`handle` raised `RetryLaterError`, or a delivery failed), the member holds its
  partitions back: paused and rewound to the batch's first offsets, it keeps polling, so it stays
  in the group however long the outage lasts; after a back-off it resumes and the batch is
  consumed again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from confluent_kafka import Message

from iot_shared.batch_sizing import BatchSizer
from iot_shared.consumer import GroupMember
from iot_shared.dead_letters import DeadLetters
from iot_shared.errors import InvalidMessageError, PipelineError, summary
from iot_shared.lifecycle import StopFlag, backoff_delays
from iot_shared.publisher import Publisher

log = logging.getLogger(__name__)

T = TypeVar("T")
# How long one poll blocks on a quiet stream: bounds how late a stop or a resume is noticed.
IDLE_POLL_SECONDS = 0.5


Decoded = tuple[list[T], list[tuple[Message, InvalidMessageError]]]


@dataclass(frozen=True)
class Batch(Generic[T]):
    """Consumed records and their decoding, done or under way."""

    records: list[Message]
    decoded: Future[Decoded[T]]


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
    sizer: BatchSizer = field(init=False)
    _next_delay: Callable[[], float] = field(init=False)
    _resume_at: float | None = field(init=False, default=None)
    _decoder: ThreadPoolExecutor = field(init=False)
    _ahead: Batch[T] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._next_delay = self.backoff()
        self.sizer = BatchSizer(self.member.service, self.max_batch, self.latency_target_seconds)
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")

    def run(self, stop: StopFlag, between: Callable[[], None] = lambda: None) -> None:
        """Steps until STOP; BETWEEN runs after each (a batch, or an idle poll)."""
        try:
            while not stop:
                self.step()
                between()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the decoding thread; a batch decoded ahead is left uncommitted, so it comes again."""
        self._ahead = None
        self._decoder.shutdown(wait=True, cancel_futures=True)

    def step(self) -> bool | None:
        """One batch, if there is one: True = committed, False = held back, None = nothing came.

        While this batch is handled (the forward pass releases the GIL), the records that have
        already arrived after it are decoded on a second thread: decoding overlaps handling.
        """
        self.member.raise_if_fatal()
        wait = IDLE_POLL_SECONDS
        if self._resume_at is not None:
            remaining = self._resume_at - time.monotonic()
            if remaining <= 0:
                self._resume_at = None
                self.member.resume()
            else:
                wait = min(wait, remaining)
        batch, self._ahead = self._ahead, None
        if batch is None:
            records = self.poll_batch(wait)
            if not records:
                self.member.commit_due()  # what the last batches finished, once the stream is quiet
                self.publisher.poll()  # librdkafka's log lines, while nothing is produced
                return None
            batch = self._start_decoding(records)
        # Only what has arrived already: decoding ahead must never delay this batch.
        if following := self.member.consume(self.sizer.limit, 0):
            self._ahead = self._start_decoding(following)
        return self._finish(batch)

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
        deadline = time.monotonic() + min(self.max_fill_wait_seconds, self.sizer.time_left(records))
        while len(records) < limit and not self.complete(records):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # One record ends the wait, so `complete` is asked again as soon as anything comes.
            if not (more := self.member.consume(1, remaining)):
                break
            records += more + self.member.consume(limit - len(records) - 1, 0)
        return records

    def _start_decoding(self, records: Sequence[Message]) -> Batch[T]:
        self.sizer.consumed(records)
        return Batch(list(records), self._decoder.submit(self.decode_all, records))

    def _finish(self, batch: Batch[T]) -> bool:
        started = time.perf_counter()
        messages, invalid = batch.decoded.result()
        # The publisher is not thread-safe: dead letters are sent from this thread only.
        for record, error in invalid:
            self.dead_letters.send(record, error)
        try:
            if messages:
                self.handle(messages)
            failures = self.publisher.flush(self.delivery_timeout_seconds)
            if failures:
                raise RetryLaterError(f"{len(failures)} messages not acknowledged by the broker")
        except RetryLaterError as exc:
            # What was decoded ahead is dropped and rewound too: it must not overtake this batch.
            ahead, self._ahead = self._ahead, None
            self._hold_back(batch.records + (ahead.records if ahead else []), exc)
            return False
        self._next_delay = self.backoff()
        self.sizer.handled(len(batch.records), time.perf_counter() - started)
        self.member.commit(batch.records)
        return True

    def readiness(self) -> tuple[bool, str]:
        """For /readyz: the consumer can go on and a broker answers."""
        if self.member.fatal is not None:
            return False, f"kafka consumer failed: {self.member.fatal.str()}"
        return self.publisher.readiness()

    def decode_all(self, records: Sequence[Message]) -> Decoded[T]:
        """The valid messages, and each invalid record with its contract error. Pure: it may run
        on the decoding thread."""
        messages: list[T] = []
        invalid: list[tuple[Message, InvalidMessageError]] = []
        for record in records:
            try:
                messages.append(self.decode(record))
            except InvalidMessageError as exc:
                invalid.append((record, exc))
            except Exception as exc:  # one record must never stop the service
                invalid.append((record, InvalidMessageError("undecodable", f"{type(exc).__name__}: {exc}")))
        return messages, invalid

    def _hold_back(self, records: Sequence[Message], exc: BaseException) -> None:
        delay = self._next_delay()
        log.warning(
            "batch of %d not finished (%s); holding back, again in %.1fs", len(records), summary(exc), delay
        )
        self.member.hold_back(records)
        self._resume_at = time.monotonic() + delay
