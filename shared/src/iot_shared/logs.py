"""One log format for every service: timestamp, level, logger, message, on stderr. librdkafka's
own lines join it through LIBRDKAFKA, with their repeats held back."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

# Every Kafka client logs here (base_config sets it as the client's `logger`); confluent-kafka
# maps librdkafka's syslog levels to logging's and hands the lines over in the client's poll().
LIBRDKAFKA = logging.getLogger("librdkafka")

# What differs between two reports of one failure: "(after 0ms in state CONNECT)".
_VARYING_TAIL = re.compile(r" \(after \d+ms in state .*\)$")


class RepeatFilter(logging.Filter):
    """Shows a line at most once per `window` seconds; the next one shown says how many like it
    were held back meanwhile. Against an unreachable broker, librdkafka reconnects, and reports
    the same failure, about 20 times a second."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._shown: dict[str, tuple[float, int]] = {}  # line -> (when last shown, held back since)
        self._lock = threading.Lock()  # clients may be polled from several threads

    def filter(self, record: logging.LogRecord) -> bool:
        line = _VARYING_TAIL.sub("", record.getMessage())
        now = self._clock()
        with self._lock:
            shown_at, held = self._shown.get(line, (now - self._window, 0))
            if now - shown_at < self._window:
                self._shown[line] = (shown_at, held + 1)
                return False
            if len(self._shown) > 1000:  # lines with a changing detail: forget the stale ones
                self._shown = {k: v for k, v in self._shown.items() if now - v[0] < self._window}
            self._shown[line] = (now, 0)
        if held:
            summary = f"and {held} more like it in the last {now - shown_at:.0f}s"
            record.msg, record.args = f"{record.getMessage()} ({summary})", None
        return True


# 30 s, as librdkafka's own hold on identical errors, which never takes here: each reconnect goes
# through a new bootstrap broker that counts afresh. `metadata.recovery.strategy=none` would quiet
# it too, but it also turns off re-bootstrapping, which is about recovery, not logs.
LIBRDKAFKA.addFilter(RepeatFilter(30.0))


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
