"""The deployment tests' image registry on a machine where nothing was ever pushed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import servers


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    ran: list[list[str]] = []
    monkeypatch.setattr(servers, "run", lambda command, **_: ran.append(list(command)))
    return ran


def test_an_empty_storage_is_not_garbage_collected(tmp_path: Path, commands: list[list[str]]) -> None:
    # A first run: the cache folder may not even exist yet; the collector fails on it.
    servers.collect_garbage(tmp_path / "config.yml", tmp_path / "data")
    assert commands == []


def test_a_storage_with_repositories_is_garbage_collected(tmp_path: Path, commands: list[list[str]]) -> None:
    storage = tmp_path / "data"
    (storage / servers.REPOSITORIES / "iot" / "iot-sink").mkdir(parents=True)
    servers.collect_garbage(tmp_path / "config.yml", storage)
    assert commands == [
        ["docker-registry", "garbage-collect", "--delete-untagged", str(tmp_path / "config.yml")]
    ]
