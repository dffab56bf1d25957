"""CouchDB over TLS (its own port, 6984 by default): the sink and the setup verify the server's
certificate against the deployment's CA, and a client that trusts another CA stores nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from ibm_cloud_sdk_core import ApiException
from pydantic import SecretStr

from iot_shared.couch import make_client, ping
from iot_shared.settings import CouchSettings
from iot_sink.couch_setup import CouchSetupSettings, setup
from testbed.harness import Stack
from testbed.private_stack import PASSWORD, PrivateCouch, private_couch
from tests.tls import another_ca

SINK_PASSWORD = "local-dev-only"  # stack.sh's iot-couchdb-setup made iot_sink with it


@pytest.fixture(scope="module")
def couch(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateCouch]:
    with private_couch(stack, tmp_path_factory.mktemp("couch-tls")) as server:
        yield server


def sink_settings(couch: PrivateCouch, ca_file: Path | None) -> CouchSettings:
    return CouchSettings(
        couchdb_url=couch.tls_url,
        couchdb_user="iot_sink",
        couchdb_password=SecretStr(SINK_PASSWORD),
        couchdb_ca_file=ca_file,
        max_batch=1,
    )


def test_the_sink_stores_over_tls_trusting_the_deployments_ca(couch: PrivateCouch) -> None:
    client = make_client(sink_settings(couch, couch.ca_file))
    ping(client, "img_db")
    client.put_document(db="img_db", doc_id="tls-check", document={"through": "tls"}).get_result()
    stored = couch.stack.couch("GET", "img_db/tls-check")
    assert stored.status_code == 200 and stored.json()["through"] == "tls"


@pytest.mark.parametrize("trust", ["the system's CAs", "another CA"])
def test_a_client_that_does_not_trust_the_ca_stores_nothing(
    couch: PrivateCouch, trust: str, tmp_path: Path
) -> None:
    ca_file = another_ca(tmp_path) if trust == "another CA" else None
    client = make_client(sink_settings(couch, ca_file), timeout=10)
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        client.put_document(db="img_db", doc_id="untrusted", document={"x": 1}).get_result()
    assert couch.stack.couch("GET", "img_db/untrusted").status_code == 404


def test_anonymous_requests_over_tls_are_refused(couch: PrivateCouch) -> None:
    response = requests.get(f"{couch.tls_url}/img_db/_all_docs", verify=couch.ca_file, timeout=30)
    assert response.status_code == 401


def test_a_second_setup_over_tls_changes_nothing(couch: PrivateCouch) -> None:
    # Each user's password is checked by logging in with it: over TLS, that needs the CA too,
    # or every run would set the passwords again.
    settings = CouchSetupSettings(
        couchdb_url=couch.tls_url,
        couchdb_user="admin",
        couchdb_password=SecretStr(PASSWORD),
        couchdb_ca_file=couch.ca_file,
        couchdb_sink_password=SecretStr(SINK_PASSWORD),
        couchdb_reader_password=SecretStr(SINK_PASSWORD),
    )
    setup(settings)
    assert setup(settings) == []


def test_the_wrong_admin_password_over_tls_is_a_clear_refusal(couch: PrivateCouch) -> None:
    client = make_client(
        CouchSettings(
            couchdb_url=couch.tls_url,
            couchdb_user="admin",
            couchdb_password=SecretStr("wrong"),
            couchdb_ca_file=couch.ca_file,
            max_batch=1,
        )
    )
    with pytest.raises(ApiException) as refused:
        client.get_session_information().get_result()
    assert refused.value.status_code == 401
