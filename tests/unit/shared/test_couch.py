"""The CouchDB client's failover between a cluster's nodes, against small HTTP servers on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from iot_shared.couch import client_for
from testbed.ports import free_port


class Node(BaseHTTPRequestHandler):
    """Answers every GET with the node's port and the path it was asked for."""

    def do_GET(self) -> None:
        body = json.dumps({"port": self.server.server_address[1], "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def node() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Node)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_node_that_does_not_answer_is_left_for_the_next(
    node: str, caplog: pytest.LogCaptureFixture
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = client_for(f"{down},{node}", "iot_sink", "pw", timeout=5)

    answer = client.get_database_information(db="img_db").get_result()
    assert answer == {"port": int(node.rsplit(":", 1)[1]), "path": "/img_db"}
    assert "did not answer" in caplog.text and down in caplog.text
    # The live node is kept: the next request goes straight to it.
    caplog.clear()
    client.get_database_information(db="img_db").get_result()
    assert client.service_url == node
    assert "did not answer" not in caplog.text


def test_when_no_node_answers_the_error_is_raised(node: str) -> None:
    down = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    client = client_for(",".join(down), "iot_sink", "pw", timeout=5)
    with pytest.raises(requests.ConnectionError):
        client.get_database_information(db="img_db").get_result()


def test_one_url_is_one_node(node: str) -> None:
    client = client_for(f"{node}/", "iot_sink", "pw")
    assert client.nodes == [node]
    assert client.get_server_information().get_result()["path"] == "/"
