from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from iot_shared.healthcheck import main, probe_url
from iot_shared.http_server import Probe, serve_http
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


def test_healthcheck_reaches_a_service_bound_to_one_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # 127.0.0.2 stands for the host's own address (Ansible's iot_address): 127.0.0.1 does not answer.
    port = free_port()
    server = serve_http(port, lambda: (True, "consuming"), host="127.0.0.2")
    assert server is not None
    monkeypatch.setenv("IOT_METRICS_PORT", str(port))
    try:
        monkeypatch.setenv("IOT_METRICS_ADDRESS", "127.0.0.1")
        assert main([]) == 1
        monkeypatch.setenv("IOT_METRICS_ADDRESS", "127.0.0.2")
        assert main([]) == 0
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("address", "url"),
    [
        (None, "http://127.0.0.1:8003/readyz"),
        ("0.0.0.0", "http://127.0.0.1:8003/readyz"),  # noqa: S104
        ("::", "http://[::1]:8003/readyz"),
        ("10.0.0.5", "http://10.0.0.5:8003/readyz"),
        ("fd00::5", "http://[fd00::5]:8003/readyz"),
    ],
)
def test_probe_url_calls_the_address_the_service_listens_on(address: str | None, url: str) -> None:
    environ = {"IOT_METRICS_PORT": "8003"} | ({} if address is None else {"IOT_METRICS_ADDRESS": address})
    assert probe_url("/readyz", environ) == url


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
