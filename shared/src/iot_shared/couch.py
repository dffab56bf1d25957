"""CouchDB through the official ibmcloudant SDK: an authenticated client and database setup.

A client may know several URLs, the nodes of one CouchDB cluster, any of which serves every
request: when the node in use cannot be reached, the request goes to the next one, which is
kept for the requests after it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
from ibm_cloud_sdk_core import ApiException, DetailedResponse
from ibm_cloud_sdk_core.authenticators import BasicAuthenticator
from ibmcloudant.cloudant_v1 import CloudantV1

from iot_shared.settings import CouchSettings, node_urls

log = logging.getLogger(__name__)


class NodesClient(CloudantV1):  # type: ignore[misc]  # the SDK has no type hints
    """A CloudantV1 that fails over between the nodes of a cluster.

    Only a request that reached no node (connection refused or reset, time-out) goes to the next
    one; an answer, even an error, is the cluster's answer. A write retried this way may have
    reached the first node after all; the sink resolves the conflict that follows like any other.
    """

    def __init__(self, urls: Sequence[str], authenticator: BasicAuthenticator) -> None:
        if not urls:
            raise ValueError("no CouchDB URL")
        super().__init__(authenticator=authenticator)
        self.nodes = list(urls)
        self.set_service_url(self.nodes[0])

    def send(self, request: Any, **kwargs: Any) -> DetailedResponse:
        for _ in self.nodes[1:]:
            try:
                return super().send(request, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                request = self._next_node(request, exc)
        return super().send(request, **kwargs)  # the last node tried: its error is the caller's

    def _next_node(self, request: Any, exc: Exception) -> Any:
        failed = self.service_url
        self.set_service_url(self.nodes[(self.nodes.index(failed) + 1) % len(self.nodes)])
        log.warning(
            "CouchDB node %s did not answer (%s); going on with %s",
            failed,
            type(exc).__name__,
            self.service_url,
        )
        return {**request, "url": self.service_url + request["url"][len(failed) :]}


def make_client(settings: CouchSettings, timeout: float = 30.0) -> CloudantV1:
    """Always authenticated: CouchDB refuses anonymous requests (401)."""
    return client_for(
        settings.couchdb_url,
        settings.couchdb_user,
        settings.couchdb_password.get_secret_value(),
        timeout,
        settings.couchdb_ca_file,
    )


def client_for(
    url: str, user: str, password: str, timeout: float = 30.0, ca_file: Path | None = None
) -> CloudantV1:
    """A client of the server at URL, or of the cluster whose nodes' URLs it lists (commas).

    An https node's certificate must be signed by `ca_file`'s CA, or by one the system trusts.
    """
    client = NodesClient(node_urls(url), BasicAuthenticator(user, password))
    client.set_http_config({"timeout": timeout, **({"verify": str(ca_file)} if ca_file else {})})
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
