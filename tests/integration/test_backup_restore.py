"""Backing up img_db and restoring it into an empty CouchDB, by CouchDB's own replication, as
docs/operating.md ("Backing up and restoring CouchDB") tells an operator to: the backup is pulled
as `iot_reader`, the restore goes into a database `iot-couchdb-setup` made, and `iot-audit` finds
nothing lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.harness import Pipeline, Stack
from testbed.private_stack import PrivateCouch, private_couch

IMAGES = 30
READER = ("iot_reader", "local-dev-only")  # stack.sh's iot-couchdb-setup made it on every CouchDB


def endpoint(url: str, user: str, password: str) -> dict[str, Any]:
    """A replication source or target with its credentials (kept out of the URL and the logs)."""
    return {"url": url, "auth": {"basic": {"username": user, "password": password}}}


def replicate(on: Stack, source: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """A one-shot replication, run by the server ON as its admin; returns CouchDB's answer once
    it has finished."""
    body = {"source": source, "target": target, "create_target": True}
    response = on.couch("POST", "_replicate", json=body, timeout=300)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert result["ok"] is True, result
    return result


def revisions(stack: Stack, db: str) -> dict[str, str]:
    """Each document's winning revision, design documents included."""
    rows = stack.couch("GET", f"{db}/_all_docs").json()["rows"]
    return {row["id"]: row["value"]["rev"] for row in rows}


@pytest.fixture
def servers(stack: Stack, tmp_path: Path) -> Iterator[tuple[PrivateCouch, PrivateCouch]]:
    """A backup server, and an empty CouchDB to restore into (each set up like any of ours)."""
    with private_couch(stack, tmp_path / "backup") as backup, private_couch(stack, tmp_path / "new") as new:
        yield backup, new


def test_a_backup_restored_into_an_empty_couchdb_loses_nothing(
    pipeline: Pipeline, servers: tuple[PrivateCouch, PrivateCouch]
) -> None:
    backup, new = (server.stack for server in servers)
    pipeline.start("inference")
    pipeline.start("sink")
    pipeline.produce(IMAGES)
    pipeline.wait_for_complete(IMAGES, timeout=180)
    stored = revisions(pipeline.stack, pipeline.db)

    # Backup: the backup server pulls img_db as the reader, which may not write to it.
    replicate(
        backup,
        endpoint(f"{pipeline.stack.couchdb_url}/{pipeline.db}", *READER),
        endpoint(f"{backup.couchdb_url}/img_db_backup", backup.couchdb_user, backup.couchdb_password),
    )
    assert revisions(backup, "img_db_backup") == stored
    # Only its admin may read the backup (CouchDB's default for a new database).
    assert backup.couch("GET", "img_db_backup/_all_docs", auth=READER).status_code == 403

    # Restore into the new server's img_db, which iot-couchdb-setup made (members, design
    # document) and which holds nothing else yet.
    assert set(revisions(new, "img_db")) == {"_design/iot_access"}
    replicate(
        new,
        endpoint(f"{backup.couchdb_url}/img_db_backup", backup.couchdb_user, backup.couchdb_password),
        endpoint(f"{new.couchdb_url}/img_db", new.couchdb_user, new.couchdb_password),
    )
    assert revisions(new, "img_db") == stored

    report = pipeline.audit_report(
        IOT_COUCHDB_URL=new.couchdb_url,
        IOT_COUCHDB_USER=READER[0],
        IOT_COUCHDB_PASSWORD=READER[1],
        IOT_COUCHDB_DB="img_db",
    )
    assert report["lost"]["count"] == report["extra"]["count"] == 0, report
    assert (report["produced"], report["complete"], report["documents"]) == (IMAGES, IMAGES, IMAGES)
    # The images themselves came along: the attachments' digests are the original's.
    some = next(doc_id for doc_id in stored if not doc_id.startswith("_design/"))
    original = pipeline.stack.couch("GET", f"{pipeline.db}/{some}").json()["_attachments"]
    assert new.couch("GET", f"img_db/{some}").json()["_attachments"] == original
