"""Metrics proven against a real Prometheus: every dashboard query must return data."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import Pipeline, Service, Stack
from tests.integration.test_dead_letters import BAD_IMAGES
from tests.paths import REPO
from tests.ports import free_port
from tests.waiting import wait_for

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "iot-pipeline.json"
IMAGES = 400
ROLES = ("producer", "inference", "sink")


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def start_prometheus(ports: dict[str, int], workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed: `make test` installs Debian's prometheus package"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": role, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for role, port in ports.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdout=(workdir / "prometheus.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    return proc, f"http://{address}"


@dataclass
class Observed:
    pipeline: Pipeline
    prometheus: str
    ports: dict[str, int]
    services: dict[str, Service]
    health: dict[str, tuple[bool, bool]]  # role -> (/healthz answered 200, /readyz answered 200)

    def query(self, expr: str) -> list[dict[str, object]]:
        response = requests.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def scrape(self, role: str) -> dict[str, float]:
        """Each sample of a service's /metrics, summed over label sets, by sample name."""
        text = requests.get(f"http://127.0.0.1:{self.ports[role]}/metrics", timeout=10).text
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals


@pytest.fixture(scope="module")
def observed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    workdir = tmp_path_factory.mktemp("prometheus")
    pipeline = Pipeline(stack, workdir)
    pipeline.create_topics()
    ports = {role: free_port() for role in ROLES}
    prometheus, url = start_prometheus(ports, workdir)
    try:
        wait_for("Prometheus", lambda: _ok(f"{url}/-/ready"), 60)
        services = {
            role: pipeline.start(role, IOT_METRICS_PORT=str(ports[role])) for role in ("inference", "sink")
        }
        pipeline.send_raw(pipeline.images_topic, list(BAD_IMAGES.values()))
        # Slow enough that the producer is still scraped while the queries run.
        services["producer"] = pipeline.start(
            "producer", IOT_COUNT=str(IMAGES), IOT_RATE="25", IOT_METRICS_PORT=str(ports["producer"])
        )
        # Probed while every service surely runs (the producer sends for 16 s).
        health = {role: _health(ports[role], pipeline) for role in ROLES}
        observed = Observed(pipeline, url, ports, services, health)
        pipeline.wait_for_complete(IMAGES // 3, timeout=120)
        yield observed
    finally:
        prometheus.terminate()
        prometheus.wait(30)
        pipeline.close()


def test_every_dashboard_query_returns_data(observed: Observed) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    missing = []
    for title, expr in queries:
        try:
            wait_for(f"data for {expr}", lambda e=expr: observed.query(e), 60, observed.pipeline.alive)
        except AssertionError:
            missing.append(f"{title}: {expr}")
    assert not missing, "dashboard queries without data:\n" + "\n".join(missing)


def test_health_and_readiness_endpoints(observed: Observed) -> None:
    for role in ROLES:
        assert observed.health[role] == (True, True), role


def test_counters_count_what_went_through(observed: Observed) -> None:
    assert observed.services["producer"].wait(120) == 0
    observed.pipeline.wait_for_complete(IMAGES, timeout=120)
    inference, sink = observed.scrape("inference"), observed.scrape("sink")
    assert inference["iot_inference_predictions_total"] == IMAGES
    assert inference["iot_dlq_messages_total"] == len(BAD_IMAGES)
    assert inference["iot_kafka_consumed_messages_total"] == IMAGES + len(BAD_IMAGES)
    assert sink["iot_sink_documents_completed_total"] == IMAGES
    assert sink["iot_dlq_messages_total"] == len(BAD_IMAGES)
    assert sink["iot_sink_end_to_end_latency_seconds_count"] == IMAGES


def _health(port: int, pipeline: Pipeline) -> tuple[bool, bool]:
    base = f"http://127.0.0.1:{port}"
    healthz = wait_for(f"{base}/healthz", lambda: _ok(f"{base}/healthz"), 120, pipeline.alive)
    readyz = wait_for(f"{base}/readyz", lambda: _ok(f"{base}/readyz"), 60, pipeline.alive)
    return healthz, readyz


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
