"""What the test machine serves to the hosts: files over HTTP and an image registry.

Both listen on the test network's gateway address (the hosts' only way to the test machine) and
on nothing else.
"""

from __future__ import annotations

import functools
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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
