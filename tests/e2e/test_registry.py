"""The test registry starts on a machine where nothing was ever pushed (a fresh cache)."""

from __future__ import annotations

from pathlib import Path

import requests

from testbed.ports import free_port
from tests.e2e.servers import registry


def test_registry_serves_from_a_storage_that_does_not_exist_yet(tmp_path: Path) -> None:
    root = tmp_path / "never-used" / "registry"
    with registry(root, "127.0.0.1", free_port()) as endpoint:
        catalog = requests.get(f"http://{endpoint}/v2/_catalog", timeout=10)
    assert catalog.status_code == 200
    assert catalog.json() == {"repositories": []}
