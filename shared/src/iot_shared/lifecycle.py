"""Graceful shutdown and bounded waiting, shared by every service."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from iot_shared.errors import PipelineError

log = logging.getLogger(__name__)

T = TypeVar("T")


class StopFlag:
    """Set by SIGTERM/SIGINT; loops poll it with a short timeout so `docker stop` finishes cleanly."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking at once on stop; returns True when stopping."""
        return self._event.wait(max(0.0, seconds))


def backoff_delays(first: float = 0.5, cap: float = 30.0) -> Callable[[], float]:
    """Exponential delays first, 2*first, ... up to cap; call to get the next one."""
    delay = first / 2

    def next_delay() -> float:
        nonlocal delay
        delay = min(cap, delay * 2)
        return delay

    return next_delay


class StoppedWhileWaitingError(PipelineError):
    """Stop was asked for before what the service waits for was ready: nothing failed."""


def wait_until(
    what: str,
    attempt: Callable[[], T],
    stop: StopFlag,
    timeout: float,
    errors: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Call `attempt` with backoff until it returns, `timeout` passes (TimeoutError), or stop is
    set (StoppedWhileWaitingError); either error says how long it really waited, and for what."""
    started = time.monotonic()
    next_delay = backoff_delays(0.25, 5.0)
    while True:
        try:
            return attempt()
        except errors as exc:
            waited = time.monotonic() - started
            if not stop and waited < timeout:
                delay = min(next_delay(), timeout - waited)
                log.warning("%s not ready (%s), retrying in %.1fs", what, exc, delay)
                if not stop.wait(delay):
                    continue
                waited = time.monotonic() - started
            if stop:
                raise StoppedWhileWaitingError(
                    f"stopped while waiting for {what}, after {waited:.0f}s: {exc}"
                ) from exc
            raise TimeoutError(f"{what} not ready after {waited:.0f}s: {exc}") from exc
