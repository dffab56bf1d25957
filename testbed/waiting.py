"""Waiting for a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    alive: Callable[[], None] = lambda: None,
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` seconds.

    `alive` is checked on every round so a crashed service fails the test at once, with its log.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        alive()
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
