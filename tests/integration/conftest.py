"""Integration fixtures: the real Kafka broker and CouchDB from deploy/local.

`make test` starts them; run alone, the `stack` fixture starts them too (idempotent). To use
servers that are already running elsewhere, set IOT_TEST_KAFKA_BOOTSTRAP and IOT_TEST_COUCHDB_URL
(and IOT_TEST_COUCHDB_METRICS_URL, where that CouchDB serves its Prometheus metrics without login,
and IOT_TEST_KAFKA_METRICS_URL, where the broker's JMX exporter serves its metrics).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.harness import Pipeline, Stack
from testbed.private_stack import STACK_SCRIPT


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Stack:
    bootstrap = os.environ.get("IOT_TEST_KAFKA_BOOTSTRAP")
    couchdb_url = os.environ.get("IOT_TEST_COUCHDB_URL")
    metrics_url = os.environ.get("IOT_TEST_COUCHDB_METRICS_URL", "")
    kafka_metrics_url = os.environ.get("IOT_TEST_KAFKA_METRICS_URL", "")
    if not (bootstrap and couchdb_url):
        subprocess.run([str(STACK_SCRIPT), "start"], check=True, timeout=600)
        bootstrap = f"127.0.0.1:{os.environ.get('IOT_LOCAL_KAFKA_PORT', '9092')}"
        couchdb_url = f"http://127.0.0.1:{os.environ.get('IOT_LOCAL_COUCHDB_PORT', '5984')}"
        metrics_url = f"http://127.0.0.1:{os.environ.get('IOT_LOCAL_COUCHDB_METRICS_PORT', '17986')}"
        kafka_metrics_url = f"http://127.0.0.1:{os.environ.get('IOT_LOCAL_KAFKA_METRICS_PORT', '9404')}"
    return Stack(
        bootstrap=bootstrap,
        couchdb_url=couchdb_url,
        couchdb_metrics_url=metrics_url,
        kafka_metrics_url=kafka_metrics_url,
        couchdb_user=os.environ.get("IOT_LOCAL_COUCHDB_USER", "admin"),
        couchdb_password=os.environ.get("IOT_LOCAL_COUCHDB_PASSWORD", "local-dev-only"),
    )


@pytest.fixture
def pipeline(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    logs: Path = tmp_path_factory.mktemp("logs")
    pipe = Pipeline(stack, logs)
    pipe.prepare()
    try:
        yield pipe
    finally:
        pipe.close()
