from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from iot_shared.healthcheck import main
from iot_shared.metrics import Probe, serve_http
from testbed.ports import free_port


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


def test_readyz_says_what_a_starting_service_does_then_follows_its_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    probe = Probe("loading the model")
    server = serve_http(port, probe, host="127.0.0.1")
    assert server is not None
    monkeypatch.setenv("IOT_METRICS_PORT", str(port))
    try:
        assert main(["/healthz"]) == 0
        with pytest.raises(urllib.error.HTTPError) as starting:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3)
        assert starting.value.code == 503
        assert starting.value.read() == b"loading the model\n"
        probe.follow(lambda: (True, "consuming"))
        assert main(["/readyz"]) == 0
    finally:
        server.shutdown()
