"""CouchDB through the official ibmcloudant SDK: an authenticated client and database setup."""

from __future__ import annotations

import logging

from ibm_cloud_sdk_core import ApiException
from ibm_cloud_sdk_core.authenticators import BasicAuthenticator
from ibmcloudant.cloudant_v1 import CloudantV1

from iot_shared.settings import CouchSettings

log = logging.getLogger(__name__)


def make_client(settings: CouchSettings, timeout: float = 30.0) -> CloudantV1:
    """Always authenticated: CouchDB refuses anonymous requests (401)."""
    return client_for(
        settings.couchdb_url, settings.couchdb_user, settings.couchdb_password.get_secret_value(), timeout
    )


def client_for(url: str, user: str, password: str, timeout: float = 30.0) -> CloudantV1:
    client = CloudantV1(authenticator=BasicAuthenticator(user, password))
    client.set_service_url(url.rstrip("/"))
    client.set_http_config({"timeout": timeout})
    return client


def ensure_database(client: CloudantV1, db: str) -> bool:
    """Create `db` unless it exists; returns True when it was created."""
    try:
        client.put_database(db=db).get_result()
    except ApiException as exc:
        if exc.status_code == 412:  # already exists
            return False
        raise
    log.info("created database %s", db)
    return True


def ping(client: CloudantV1, db: str) -> None:
    """Raises unless the server answers and `db` is readable with our credentials."""
    client.get_database_information(db=db).get_result()
