"""Each service's one HTTP port: /metrics (Prometheus), /healthz (alive) and /readyz (ready).

The port opens first thing at start, so a taken port stops the service at once (exit 2); until
the service is ready, /readyz answers 503 saying what it is doing (a `Probe`). /healthz answers
503 only when the service's main loop has stopped going round (its `Heartbeat`): the HTTP
thread answering proves nothing about the loop, which may hang while this thread serves on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from iot_shared.errors import ConfigError
from iot_shared.settings import ServiceSettings

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]
Liveness = Callable[[], tuple[bool, str]]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class PortTakenError(ConfigError):
    """The metrics port cannot be served (taken, or not ours to bind): a bad setting, exit 2."""


class Probe:
    """/readyz of a service that opens its port first, so a taken port fails at once: not ready,
    saying what it is doing, until `follow` hands it the running service's own check."""

    def __init__(self, doing: str) -> None:
        self._check: Readiness
        self.doing(doing)

    def doing(self, what: str) -> None:
        self._check = lambda: (False, what)

    def follow(self, check: Readiness) -> None:
        self._check = check

    def __call__(self) -> tuple[bool, str]:
        return self._check()


def _always_alive() -> tuple[bool, str]:
    return True, "ok"


def health_app(ready: Readiness, alive: Liveness = _always_alive) -> WsgiApp:
    metrics_app = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _check(start_response, alive)
        if path == "/readyz":
            return _check(start_response, ready)
        if path == "/metrics":
            body: Iterable[bytes] = metrics_app(environ, start_response)
            return body
        return _text(start_response, "404 Not Found", "try /metrics, /healthz or /readyz\n")

    return app


def serve_http(port: int, ready: Readiness, host: str, alive: Liveness = _always_alive) -> WSGIServer | None:
    """Serve /metrics, /healthz, /readyz on `host`:`port` from a daemon thread; port 0 turns it off."""
    if port == 0:
        return None
    try:
        server = make_server(
            host,
            port,
            health_app(ready, alive),
            server_class=ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
    except OSError as exc:
        raise PortTakenError(
            f"IOT_METRICS_ADDRESS={host}, IOT_METRICS_PORT={port}: cannot serve on {host}:{port} "
            f"({exc.strerror or exc}); choose a free port and an address of this host, or port 0 "
            "to turn it off"
        ) from None
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics, health on /healthz and /readyz", host, port)
    return server


@contextmanager
def open_port(settings: ServiceSettings, doing: str, alive: Liveness) -> Iterator[Probe]:
    """Serve the service's port for the with-block, first thing: /readyz says `doing` until the
    service has its probe follow its own check; /healthz asks `alive` (its main loop's
    `Heartbeat.liveness`) all along."""
    probe = Probe(doing)
    server = serve_http(settings.metrics_port, probe, settings.metrics_address, alive)
    try:
        yield probe
    finally:
        if server is not None:
            server.shutdown()


def _check(start_response: Callable[..., Any], check: Readiness | Liveness) -> Iterable[bytes]:
    ok, detail = check()
    return _text(start_response, "200 OK" if ok else "503 Service Unavailable", detail + "\n")


def _text(start_response: Callable[..., Any], status: str, body: str) -> Iterable[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode()]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the service log."""
