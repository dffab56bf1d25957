from __future__ import annotations

import requests
from prometheus_client import REGISTRY

from iot_shared.lifecycle import StopFlag
from iot_sink.app import write_until_stored
from iot_sink.store import WriteError


class InstantStop(StopFlag):
    """Records the back-off delays instead of sleeping them; can stop after N waits."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.delays: list[float] = []
        self.stop_after = stop_after

    def wait(self, seconds: float) -> bool:
        self.delays.append(seconds)
        if self.stop_after is not None and len(self.delays) >= self.stop_after:
            self.set()
        return bool(self)


class FlakyStore:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    def write(self, updates: dict) -> int:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return len(updates)


def retries() -> float:
    return REGISTRY.get_sample_value("iot_sink_write_retries_total") or 0.0


def test_couchdb_errors_are_retried_with_growing_backoff_until_the_write_succeeds() -> None:
    errors: list[Exception] = [requests.ConnectionError("down")] * 3 + [WriteError("forbidden")]
    store, stop, before = FlakyStore(errors), InstantStop(), retries()
    assert write_until_stored(store, {"id": None}, stop) is True  # type: ignore[arg-type, dict-item]
    assert store.calls == 5
    assert stop.delays == [0.5, 1.0, 2.0, 4.0]
    assert retries() == before + 4


def test_stopping_mid_retry_reports_the_batch_as_not_stored() -> None:
    store = FlakyStore([requests.ConnectionError("down")] * 100)
    assert write_until_stored(store, {}, InstantStop(stop_after=3)) is False  # type: ignore[arg-type]
    assert store.calls == 3


def test_backoff_is_capped() -> None:
    store, stop = FlakyStore([requests.Timeout("slow")] * 12), InstantStop()
    assert write_until_stored(store, {}, stop)  # type: ignore[arg-type]
    assert max(stop.delays) == 30.0
