"""Least privilege on the real CouchDB: what `iot-couchdb-setup` makes, and what each user may do."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import requests
from pydantic import SecretStr

from iot_sink.couch_setup import CouchSetupSettings, security_object, setup
from testbed.harness import Stack


@pytest.fixture
def accounts(stack: Stack) -> Iterator[CouchSetupSettings]:
    """A database and a sink and reader user of this test's own, made by the setup."""
    suffix = uuid.uuid4().hex[:8]
    settings = CouchSetupSettings(
        couchdb_url=stack.couchdb_url,
        couchdb_user=stack.couchdb_user,
        couchdb_password=SecretStr(stack.couchdb_password),
        couchdb_db=f"img_db_access_{suffix}",
        couchdb_sink_user=f"iot_sink_{suffix}",
        couchdb_sink_password=SecretStr(f"sink-{uuid.uuid4().hex}"),
        couchdb_reader_user=f"iot_reader_{suffix}",
        couchdb_reader_password=SecretStr(f"reader-{uuid.uuid4().hex}"),
    )
    setup(settings)
    try:
        yield settings
    finally:
        stack.couch("DELETE", settings.couchdb_db)
        for name in (settings.couchdb_sink_user, settings.couchdb_reader_user):
            user = stack.couch("GET", f"_users/org.couchdb.user:{name}").json()
            stack.couch("DELETE", f"_users/org.couchdb.user:{name}", params={"rev": user["_rev"]})


def as_user(settings: CouchSetupSettings, who: str) -> tuple[str, str] | None:
    if who == "sink":
        return settings.couchdb_sink_user, settings.couchdb_sink_password.get_secret_value()
    if who == "reader":
        return settings.couchdb_reader_user, settings.couchdb_reader_password.get_secret_value()
    return None  # anonymous


def request(settings: CouchSetupSettings, who: str, method: str, path: str, **kwargs: object) -> int:
    url = f"{settings.couchdb_url}/{path}"
    return requests.request(method, url, auth=as_user(settings, who), timeout=30, **kwargs).status_code  # type: ignore[arg-type]


def test_anonymous_requests_are_refused(accounts: CouchSetupSettings) -> None:
    db = accounts.couchdb_db
    assert request(accounts, "anonymous", "GET", f"{db}/_all_docs") == 401
    assert request(accounts, "anonymous", "PUT", f"{db}/doc", json={"x": 1}) == 401
    assert request(accounts, "anonymous", "PUT", f"{db}_other") == 401


def test_the_sink_writes_documents_but_administers_nothing(
    stack: Stack, accounts: CouchSetupSettings
) -> None:
    db = accounts.couchdb_db
    assert request(accounts, "sink", "PUT", f"{db}/an-image", json={"GroundTruth": "cat"}) == 201
    assert request(accounts, "sink", "GET", f"{db}/an-image") == 200
    # No server admin: no database created or deleted, no user read, no access rule changed.
    assert request(accounts, "sink", "PUT", f"{db}_other") in (401, 403)
    assert request(accounts, "sink", "DELETE", db) in (401, 403)
    assert request(accounts, "sink", "GET", "_users/_all_docs") in (401, 403)
    # Each shard refuses it ("not a db or server admin"), which CouchDB 3.5 answers with a 500.
    itself_as_admin = {"admins": {"names": [accounts.couchdb_sink_user], "roles": []}, "members": {}}
    assert request(accounts, "sink", "PUT", f"{db}/_security", json=itself_as_admin) >= 400
    assert stack.couch("GET", f"{db}/_security").json() == security_object()
    assert request(accounts, "sink", "PUT", f"{db}/_design/x", json={"validate_doc_update": "x"}) in (
        401,
        403,
    )


def test_the_reader_reads_but_cannot_write(accounts: CouchSetupSettings) -> None:
    db = accounts.couchdb_db
    assert request(accounts, "sink", "PUT", f"{db}/an-image", json={"GroundTruth": "cat"}) == 201
    assert request(accounts, "reader", "GET", f"{db}/an-image") == 200
    assert request(accounts, "reader", "GET", f"{db}/_all_docs") == 200
    assert request(accounts, "reader", "PUT", f"{db}/forged", json={"InferredValue": "truck"}) == 403
    assert request(accounts, "reader", "POST", f"{db}/_bulk_docs", json={"docs": [{"_id": "f"}]}) in (
        201,
        403,
    )
    assert request(accounts, "reader", "GET", f"{db}/f") == 404  # the bulk write was refused per document


def test_setup_is_idempotent_and_rotates_a_changed_password(accounts: CouchSetupSettings) -> None:
    assert setup(accounts) == []
    rotated = accounts.model_copy(update={"couchdb_sink_password": SecretStr("rotated-" + uuid.uuid4().hex)})
    assert setup(rotated) == [f"updated user {accounts.couchdb_sink_user} (role iot_writer)"]
    assert request(rotated, "sink", "GET", f"{accounts.couchdb_db}/_all_docs") == 200
    assert request(accounts, "sink", "GET", f"{accounts.couchdb_db}/_all_docs") == 401  # the old one
    assert setup(rotated) == []


def test_the_command_refuses_a_wrong_admin_password_without_printing_it(stack: Stack) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "IOT_COUCHDB_URL": stack.couchdb_url,
        "IOT_COUCHDB_USER": stack.couchdb_user,
        "IOT_COUCHDB_PASSWORD": "not-the-admin-password",
        "IOT_COUCHDB_SINK_PASSWORD": "whatever-sink-password",
    }
    result = subprocess.run(
        [sys.executable, "-m", "iot_sink.couch_setup"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert f"refused the server admin IOT_COUCHDB_USER '{stack.couchdb_user}'" in result.stderr
    assert "not-the-admin-password" not in result.stderr + result.stdout
    assert "whatever-sink-password" not in result.stderr + result.stdout
