#!/usr/bin/python3
"""Restart a pipeline service whose /healthz has failed several checks in a row.

Run by the service's watchdog timer (role service). systemd restarts a container that exits, not
one that hangs: alive but stuck, its main loop stalled (/healthz then answers 503), its process
stopped or its container paused (then nothing answers). Either counts as a failed check; so many
in a row restart the unit. A unit that is not active, or started less than the grace period ago,
is left alone. Only the Python standard library: it runs on the VM's own python3.
"""

# It runs systemctl and docker, from the PATH systemd gives it, with arguments from its unit.
# ruff: noqa: S603, S607

from __future__ import annotations

import argparse
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def check(url: str, timeout: float) -> str | None:
    """None when URL answers 200 in time, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http: main checks)
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}: {error.read(200).decode(errors='replace').strip()}"
    except OSError as error:
        return str(error)


def active_seconds(unit: str) -> float | None:
    """How long UNIT has been active, or None when it is not."""
    shown = subprocess.run(
        ["systemctl", "show", unit, "--property=ActiveState", "--property=ActiveEnterTimestampMonotonic"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    if props.get("ActiveState") != "active":
        return None
    # systemd's monotonic timestamps are CLOCK_MONOTONIC in microseconds.
    return time.clock_gettime(time.CLOCK_MONOTONIC) - int(props["ActiveEnterTimestampMonotonic"]) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit", required=True)
    parser.add_argument("--container", required=True)
    parser.add_argument("--url", required=True, help="the service's /healthz")
    parser.add_argument("--failures", type=int, default=3, help="failed checks in a row that restart it")
    parser.add_argument("--grace", type=float, default=120, help="seconds after a start not checked")
    parser.add_argument("--timeout", type=float, default=5)
    parser.add_argument("--state-dir", type=Path, default=Path("/run/iot-watchdog"))
    args = parser.parse_args()
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url must be http:// or https://, not {args.url}")

    streak_file = args.state_dir / f"{args.unit}.failures"
    age = active_seconds(args.unit)
    if age is None or age < args.grace:
        streak_file.unlink(missing_ok=True)
        return 0
    failure = check(args.url, args.timeout)
    if failure is None:
        streak_file.unlink(missing_ok=True)
        return 0
    streak = int(streak_file.read_text()) + 1 if streak_file.exists() else 1
    print(f"{args.unit}: {args.url} failed ({failure}), {streak} of {args.failures} in a row", flush=True)
    if streak < args.failures:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        streak_file.write_text(str(streak))
        return 0
    streak_file.unlink(missing_ok=True)
    print(f"{args.unit}: restarting it", flush=True)
    # A paused container would not stop until the stop timeout ran out.
    unpause = ["docker", "unpause", args.container]
    subprocess.run(unpause, capture_output=True, check=False)
    subprocess.run(["systemctl", "restart", "--no-block", args.unit], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
