from __future__ import annotations

import pytest

from iot_shared.healthcheck import main
from iot_shared.metrics import serve_http
from tests.ports import free_port


@pytest.mark.parametrize(
    ("ready", "path", "code"), [(True, "/readyz", 0), (False, "/readyz", 1), (False, "/healthz", 0)]
)
def test_healthcheck_exit_code_follows_the_endpoint(
    monkeypatch: pytest.MonkeyPatch, ready: bool, path: str, code: int
) -> None:
    port = free_port()
    server = serve_http(port, lambda: (ready, "state"), host="127.0.0.1")
    assert server is not None
    monkeypatch.setenv("IOT_METRICS_PORT", str(port))
    try:
        assert main([path]) == code
    finally:
        server.shutdown()


def test_healthcheck_fails_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_METRICS_PORT", str(free_port()))
    assert main([]) == 1
