"""podman, run with the deployment tests' own settings (containers.conf beside this file)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.e2e.commands import run

CONTAINERS_CONF = Path(__file__).with_name("containers.conf")


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS`; on failure the error names the command and what it printed."""
    return run(["podman", *args], env=podman_env(), check=check, timeout=timeout)


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0
