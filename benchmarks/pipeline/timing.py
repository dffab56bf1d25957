"""Rates and percentiles from the timestamps the pipeline itself records."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmarks.pipeline.results import Latency, Throughput


def batch_interval_rate(name: str, stamps: Sequence[float], started: float) -> Throughput:
    """Items per second from the first batch's timestamp to the last one's.

    A service stamps a whole batch with one time, so the items of the first batch were done before
    the clock starts and are not counted: (N - first batch) / (last - first). When everything came
    in one batch, the clock starts at `started` (when the service had joined its group) instead.
    """
    ordered = sorted(stamps)
    first, last = ordered[0], ordered[-1]
    in_first = sum(1 for stamp in ordered if stamp == first)
    n = len(ordered)
    if last > first:
        return Throughput(name, n, (n - in_first) / (last - first), last - first, "first to last batch")
    seconds = max(last - started, 1e-3)
    return Throughput(name, n, n / seconds, seconds, "group joined to last batch")


def span_rate(name: str, produced: Sequence[float], stored: Sequence[float]) -> Throughput:
    """End to end: N over first ProducedAt to last StoredAt."""
    seconds = max(max(stored) - min(produced), 1e-3)
    return Throughput(name, len(stored), len(stored) / seconds, seconds, "first ProducedAt to last StoredAt")


def latency(
    rate: float, produced: Sequence[float], inferred: Sequence[float], stored: Sequence[float]
) -> Latency:
    """Percentiles of each document's StoredAt - ProducedAt, and of its two legs, in ms."""
    start, middle, end = (np.asarray(stamps) * 1000.0 for stamps in (produced, inferred, stored))
    total, first_leg, second_leg = end - start, middle - start, end - middle
    sending = max(produced) - min(produced)
    return Latency(
        rate=rate,
        images=len(total),
        p50_ms=_percentile(total, 50),
        p99_ms=_percentile(total, 99),
        max_ms=float(total.max()),
        achieved_rate=(len(produced) - 1) / sending if sending > 0 else float(len(produced)),
        inferred_p50_ms=_percentile(first_leg, 50),
        inferred_p99_ms=_percentile(first_leg, 99),
        stored_after_inferred_p50_ms=_percentile(second_leg, 50),
        stored_after_inferred_p99_ms=_percentile(second_leg, 99),
    )


def _percentile(values: np.ndarray[tuple[int], np.dtype[np.float64]], q: float) -> float:
    return float(np.percentile(values, q))
