"""What the test machine serves to the hosts: files over HTTP, an image registry, and a webhook
that receives Alertmanager's notifications.

Both listen on the test network's gateway address (the hosts' only way to the test machine) and
on nothing else.
"""

from __future__ import annotations

import functools
import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from testbed.waiting import wait_for
from tests.e2e.commands import run


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def file_server(directory: Path, address: str, port: int = 8080) -> Iterator[str]:
    """Serve DIRECTORY read-only at http://ADDRESS:PORT; yields that base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer((address, port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{port}"
    finally:
        server.shutdown()
        server.server_close()


class AlertReceiver:
    """Every notification Alertmanager's webhook has POSTed, in order (its JSON bodies)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[dict[str, Any]] = []

    def add(self, notification: dict[str, Any]) -> None:
        with self._lock:
            self._received.append(notification)

    def alerts(self, status: str = "firing") -> list[dict[str, Any]]:
        """Each alert of every notification so far whose status is STATUS."""
        with self._lock:
            notifications = list(self._received)
        return [a for n in notifications for a in n.get("alerts", []) if a.get("status") == status]


@contextmanager
def alert_receiver(address: str, port: int = 8090) -> Iterator[tuple[str, AlertReceiver]]:
    """A webhook at http://ADDRESS:PORT/alerts; yields its URL and what it receives."""
    received = AlertReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.add(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{port}/alerts", received
    finally:
        server.shutdown()
        server.server_close()


REGISTRY_CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {address}:{port}
"""


# Where the filesystem driver keeps the repositories; it exists once the first image is pushed.
REPOSITORIES = Path("docker/registry/v2/repositories")


def collect_garbage(config: Path, storage: Path) -> None:
    """Delete the blobs no tag refers to any more. A storage nothing was ever pushed to (a first
    run on a new machine) has nothing to collect, and the collector fails on it ("Path not
    found"), so it is not run then."""
    if not (storage / REPOSITORIES).is_dir():
        return
    run(["docker-registry", "garbage-collect", "--delete-untagged", str(config)], timeout=600)


@contextmanager
def registry(root: Path, address: str, port: int = 5000) -> Iterator[str]:
    """Debian's docker-registry (the CNCF Distribution registry), plain HTTP; yields host:port.

    Clients must list it as an insecure registry. Its storage under ROOT is kept between runs,
    so pushing an unchanged image again only checks its layers; what no tag refers to any more
    (an older build) is garbage-collected first.
    """
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    storage = root / "data"
    config.write_text(REGISTRY_CONFIG.format(root=storage, address=address, port=port))
    collect_garbage(config, storage)
    log = (root / "registry.log").open("w")
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"{address}:{port}"
    try:

        def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"docker-registry exited; see {root / 'registry.log'}")
            try:
                return requests.get(f"http://{endpoint}/v2/", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for("the image registry", answers, 30)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
