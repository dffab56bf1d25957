"""The service role's watchdog script (roles/service/files/iot-watchdog.py), run as its timer runs
it, against a real HTTP endpoint, with `systemctl` and `docker` stand-ins on PATH that record what
they are asked."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from testbed.paths import REPO

SCRIPT = REPO / "deploy" / "ansible" / "roles" / "service" / "files" / "iot-watchdog.py"


class Endpoint:
    """/healthz on a free loopback port, answering `status` (None: it never answers)."""

    def __init__(self) -> None:
        self.status: int | None = 200
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if endpoint.status is None:
                    threading.Event().wait(3)  # hung: longer than the script's timeout
                    return
                self.send_response(endpoint.status)
                self.end_headers()
                self.wfile.write(b"main loop stalled for 93 s\n")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/healthz"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    served = Endpoint()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.server.shutdown()
    served.server.server_close()


def fake_tools(folder: Path, active_for_s: float) -> Path:
    """`systemctl` (a unit active for ACTIVE_FOR_S seconds) and `docker`, each logging its arguments."""
    log = folder / "calls.log"
    started_us = int((time.clock_gettime(time.CLOCK_MONOTONIC) - active_for_s) * 1e6)  # as systemd
    for tool, output in (
        ("systemctl", f"ActiveState=active\\nActiveEnterTimestampMonotonic={started_us}\\n"),
        ("docker", ""),
    ):
        path = folder / tool
        path.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nprintf "{output}"\n')
        path.chmod(0o755)
    return log


def watchdog(tools: Path, state: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--unit", "iot-sink.service", "--container", "iot-sink",
         "--url", url, "--failures", "3", "--grace", "60", "--timeout", "1", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=30, check=True,
        env={**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"},
    )  # fmt: skip


def restarts(log: Path) -> list[str]:
    calls = log.read_text().splitlines() if log.exists() else []
    return [c for c in calls if not c.startswith("systemctl show")]


@pytest.mark.parametrize("failure", [503, None], ids=["stalled loop", "no answer"])
def test_three_failed_checks_in_a_row_restart_the_unit(
    tmp_path: Path, endpoint: Endpoint, failure: int | None
) -> None:
    log = fake_tools(tmp_path, active_for_s=600)
    endpoint.status = failure
    for _ in range(2):
        watchdog(tmp_path, tmp_path / "state", endpoint.url)
    assert restarts(log) == []
    last = watchdog(tmp_path, tmp_path / "state", endpoint.url)
    assert "3 of 3 in a row" in last.stdout and "restarting it" in last.stdout
    # A paused container is unpaused first, or it would not stop before the stop timeout.
    assert restarts(log) == ["docker unpause iot-sink", "systemctl restart --no-block iot-sink.service"]
    if failure == 503:
        assert "main loop stalled" in last.stdout
    # The count starts again after a restart.
    watchdog(tmp_path, tmp_path / "state", endpoint.url)
    assert len(restarts(log)) == 2


def test_a_passed_check_starts_the_count_again(tmp_path: Path, endpoint: Endpoint) -> None:
    log = fake_tools(tmp_path, active_for_s=600)
    for status in (503, 503, 200, 503, 503):
        endpoint.status = status
        watchdog(tmp_path, tmp_path / "state", endpoint.url)
    assert restarts(log) == []


def test_a_unit_within_its_grace_period_is_not_checked(tmp_path: Path, endpoint: Endpoint) -> None:
    log = fake_tools(tmp_path, active_for_s=5)
    endpoint.status = 503
    for _ in range(4):
        result = watchdog(tmp_path, tmp_path / "state", endpoint.url)
    assert restarts(log) == [] and result.stdout == ""
