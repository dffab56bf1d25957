"""Where the deployment tests keep what is slow to make and safe to reuse (root filesystems)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """`$IOT_E2E_CACHE` (default ~/.cache/iot-pipeline/e2e)/parts, created."""
    root = Path(os.environ.get("IOT_E2E_CACHE", Path.home() / ".cache" / "iot-pipeline" / "e2e"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
