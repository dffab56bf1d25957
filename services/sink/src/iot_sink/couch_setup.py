"""`iot-couchdb-setup`: the pipeline's database and its least-privilege users, made as the server admin.

- `img_db`, readable and writable only by its members: the roles `iot_writer` and `iot_reader`
  (its `_security` object); anonymous requests get 401.
- `iot_sink` (role `iot_writer`): writes documents; no server admin, so it cannot create or
  delete a database, read `_users` or change the design documents and `_security`.
- `iot_reader` (role `iot_reader`): reads only; the design document's `validate_doc_update`
  refuses its writes (403), as it refuses everyone's but writers' and admins'.

Idempotent: what is as wanted is left alone, so running it at every start changes nothing (a
user's password is checked by logging in with it). Compose runs it as a one-shot container, the
local stack after starting CouchDB; the Ansible role applies the same objects with its own tasks
(`roles/couchdb`), which a unit test keeps equal to these.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ibm_cloud_sdk_core import ApiException
from ibmcloudant.cloudant_v1 import CloudantV1
from pydantic import Field, SecretStr

from iot_shared.couch import client_for, ensure_database, make_client
from iot_shared.errors import ConfigError
from iot_shared.lifecycle import StopFlag
from iot_shared.service import run_service
from iot_shared.settings import CouchSettings
from iot_sink import __version__

log = logging.getLogger("iot_couchdb_setup")

WRITER_ROLE = "iot_writer"
READER_ROLE = "iot_reader"
ACCESS_DDOC = "iot_access"
# CouchDB runs this (QuickJS) on every write to the database: members may read, only writers write.
VALIDATE_DOC_UPDATE = """\
function (newDoc, oldDoc, userCtx) {
  if (userCtx.roles.indexOf('_admin') === -1 && userCtx.roles.indexOf('iot_writer') === -1) {
    throw({forbidden: userCtx.name + ' may read this database but not write to it'});
  }
}"""


class CouchSetupSettings(CouchSettings):
    """IOT_COUCHDB_USER / IOT_COUCHDB_PASSWORD are the server admin's here."""

    couchdb_user: str = Field("admin", min_length=1, description="CouchDB server admin that runs the setup")
    couchdb_sink_user: str = Field("iot_sink", min_length=1, description="The sink's CouchDB user (writes)")
    couchdb_sink_password: SecretStr = Field(description="The sink's CouchDB password (never logged)")
    couchdb_reader_user: str = Field(
        "iot_reader", min_length=1, description="CouchDB user of tools and dashboards that only read"
    )
    couchdb_reader_password: SecretStr = Field(
        SecretStr(""), description="The reader's CouchDB password; empty = no reader user (never logged)"
    )


def security_object() -> dict[str, Any]:
    return {
        "admins": {"names": [], "roles": []},
        "members": {"names": [], "roles": [WRITER_ROLE, READER_ROLE]},
    }


def prepare_database(client: CloudantV1, db: str) -> list[str]:
    """`db` with its `_security` and access design document; returns what was changed."""
    changes = []
    if ensure_database(client, db):
        changes.append(f"created database {db}")
    wanted = security_object()
    if client.get_security(db=db).get_result() != wanted:
        client.put_security(db=db, admins=wanted["admins"], members=wanted["members"]).get_result()
        changes.append(f"{db}: members are the roles {WRITER_ROLE} and {READER_ROLE}")
    current = _get_or_none(lambda: client.get_design_document(db=db, ddoc=ACCESS_DDOC).get_result())
    if current is None or current.get("validate_doc_update") != VALIDATE_DOC_UPDATE:
        design = {
            "validate_doc_update": VALIDATE_DOC_UPDATE,
            **({"_rev": current["_rev"]} if current else {}),
        }
        client.put_design_document(db=db, ddoc=ACCESS_DDOC, design_document=design).get_result()
        changes.append(f"{db}: only {WRITER_ROLE} and admins may write (_design/{ACCESS_DDOC})")
    return changes


def ensure_user(
    client: CloudantV1, settings: CouchSettings, name: str, password: str, role: str
) -> str | None:
    """The `_users` document of NAME with ROLE and PASSWORD; returns what was changed, if anything."""
    doc_id = f"org.couchdb.user:{name}"
    current = _get_or_none(lambda: client.get_document(db="_users", doc_id=doc_id).get_result())
    if current is not None and current.get("roles") == [role] and _logs_in(settings, name, password):
        return None
    user = {"name": name, "type": "user", "roles": [role], "password": password}
    if current is not None:
        user["_rev"] = current["_rev"]
    client.put_document(db="_users", doc_id=doc_id, document=user).get_result()
    return f"{'updated' if current else 'created'} user {name} (role {role})"


def setup(settings: CouchSetupSettings) -> list[str]:
    """Everything, as the server admin; returns what was changed."""
    if not settings.couchdb_sink_password.get_secret_value():
        raise ConfigError("IOT_COUCHDB_SINK_PASSWORD is empty: set the password the sink will log in with")
    admin = make_client(settings)
    try:
        admin.get_session_information().get_result()
        changes = prepare_database(admin, settings.couchdb_db)
    except ApiException as exc:
        if exc.status_code in (401, 403):
            raise ConfigError(
                f"CouchDB at {settings.couchdb_url} refused the server admin IOT_COUCHDB_USER "
                f"{settings.couchdb_user!r} / IOT_COUCHDB_PASSWORD ({exc.status_code})"
            ) from None
        raise
    users = [(settings.couchdb_sink_user, settings.couchdb_sink_password, WRITER_ROLE)]
    if settings.couchdb_reader_password.get_secret_value():
        users.append((settings.couchdb_reader_user, settings.couchdb_reader_password, READER_ROLE))
    for name, password, role in users:
        if change := ensure_user(admin, settings, name, password.get_secret_value(), role):
            changes.append(change)
    return changes


def run(settings: CouchSetupSettings, stop: StopFlag) -> int:
    changes = setup(settings)
    for change in changes:
        log.info("%s", change)
    log.info("%s on %s is set up (%d changes)", settings.couchdb_db, settings.couchdb_url, len(changes))
    return 0


def _logs_in(settings: CouchSettings, name: str, password: str) -> bool:
    client = client_for(settings.couchdb_url, name, password, ca_file=settings.couchdb_ca_file)
    try:
        session = client.get_session_information().get_result()
    except ApiException as exc:
        if exc.status_code == 401:
            return False
        raise
    return bool(session.get("userCtx", {}).get("name") == name)


def _get_or_none(get: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return get()
    except ApiException as exc:
        if exc.status_code == 404:
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("iot-couchdb-setup", CouchSetupSettings, argv, run, __version__)


if __name__ == "__main__":
    sys.exit(main())
