"""Metrics proven against a real Prometheus: every dashboard query must return data, the alert
rules load and evaluate on the real series, and the live model score is what CouchDB holds."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testbed.harness import Pipeline, Service, Stack
from testbed.paths import REPO
from testbed.ports import free_port
from testbed.prometheus_api import PrometheusAPI
from testbed.waiting import wait_for
from tests.integration.test_dead_letters import BAD_IMAGES

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "iot-pipeline.json"
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
IMAGES = 400
ROLES = ("producer", "inference", "sink")
SCORED = "iot_sink_predictions_scored_total"
# Accuracy since the sinks started, as Prometheus computes it from the confusion matrix: the
# cells whose `truth` equals their `predicted` (the same diagonal the dashboard and the alert
# pick out of windowed increases).
ACCURACY_QUERY = (
    f'sum(label_replace({SCORED}, "class", "$1", "truth", "(.*)")'
    f' and on (class, predicted) label_replace({SCORED}, "class", "$1", "predicted", "(.*)"))'
    f" / sum({SCORED})"
)
Cells = dict[tuple[str, str], int]


def dashboard_queries() -> list[tuple[str, str]]:
    """The pipeline's queries; the Hosts row's (node exporter series) are evaluated against a real
    node exporter in tests/deploy/test_host_metrics.py."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["expr"])
        for p in dashboard["panels"]
        for t in p.get("targets", [])
        if "node_" not in t["expr"]
    ]


def scored_cells(metrics_text: str) -> Cells:
    """The confusion matrix a sink exports: (truth, predicted) -> images."""
    return {
        (s.labels["truth"], s.labels["predicted"]): int(s.value)
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name == SCORED
    }


def wait_for_scored(port: int, images: int) -> Cells:
    """The confusion matrix of the sink on `port`, once it has scored `images` images: it counts
    just after CouchDB answered its write, so a moment after the documents are seen there."""

    def cells() -> Cells | None:
        found = scored_cells(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        return found if sum(found.values()) == images else None

    return wait_for(f"{images} images scored by the sink", cells, 30)


def document_cells(docs: list[dict[str, object]]) -> Cells:
    """The same matrix counted from the CouchDB documents."""
    return dict(Counter((str(d["GroundTruth"]), str(d["InferredValue"])) for d in docs))


def accuracy_of(cells: Cells) -> float:
    return sum(n for (truth, predicted), n in cells.items() if truth == predicted) / sum(cells.values())


def start_prometheus(
    ports: dict[str, int], couchdb_metrics_url: str, kafka_metrics_url: str, workdir: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """Scraping the services on PORTS, CouchDB's own endpoint as job `couchdb` and the broker's
    JMX exporter as job `kafka` (the job names the dashboard and the alerts use)."""
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed: `make test` installs Debian's prometheus package"
    assert couchdb_metrics_url, "set IOT_TEST_COUCHDB_METRICS_URL with IOT_TEST_COUCHDB_URL"
    assert kafka_metrics_url, "set IOT_TEST_KAFKA_METRICS_URL with IOT_TEST_KAFKA_BOOTSTRAP"
    couchdb = urlsplit(couchdb_metrics_url)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [
            {"job_name": role, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for role, port in ports.items()
        ]
        + [
            {
                "job_name": "couchdb",
                "scheme": couchdb.scheme,
                "metrics_path": "/_node/_local/_prometheus",
                "static_configs": [{"targets": [couchdb.netloc]}],
            },
            {"job_name": "kafka", "static_configs": [{"targets": [urlsplit(kafka_metrics_url).netloc]}]},
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
    prometheus: PrometheusAPI
    ports: dict[str, int]
    services: dict[str, Service]
    health: dict[str, tuple[bool, bool]]  # role -> (/healthz answered 200, /readyz answered 200)

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
    pipeline.prepare()
    ports = {role: free_port() for role in ROLES}
    prometheus, url = start_prometheus(ports, stack.couchdb_metrics_url, stack.kafka_metrics_url, workdir)
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
        observed = Observed(pipeline, PrometheusAPI(url), ports, services, health)
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
            wait_for(
                f"data for {expr}", lambda e=expr: observed.prometheus.query(e), 60, observed.pipeline.alive
            )
        except AssertionError:
            missing.append(f"{title}: {expr}")
    assert not missing, "dashboard queries without data:\n" + "\n".join(missing)


def test_health_and_readiness_endpoints(observed: Observed) -> None:
    for role in ROLES:
        assert observed.health[role] == (True, True), role


def test_accuracy_from_the_counters_is_the_accuracy_in_couchdb(observed: Observed) -> None:
    assert observed.services["producer"].wait(120) == 0
    docs = observed.pipeline.wait_for_complete(IMAGES, timeout=120)
    from_couch = document_cells(docs)
    cells = wait_for_scored(observed.ports["sink"], IMAGES)
    assert len(cells) == 100  # every cell exported, at 0 until an image lands in it
    assert {cell: n for cell, n in cells.items() if n} == from_couch
    assert accuracy_of(cells) == accuracy_of(from_couch)

    # Prometheus computes the same, once it has scraped every image.
    wait_for(
        f"{IMAGES} images scored in Prometheus", lambda: _value(observed, f"sum({SCORED})") == IMAGES, 60
    )
    assert abs(_value(observed, ACCURACY_QUERY) - accuracy_of(from_couch)) < 1e-9
    # The dashboard's confusion matrix: its rows add up to each class's images in CouchDB.
    [matrix] = [expr for title, expr in dashboard_queries() if title.startswith("Confusion matrix")]
    rows: Counter[str] = Counter()
    for sample in observed.prometheus.query(matrix):
        rows[sample["metric"]["truth"]] += int(float(sample["value"][1]))  # type: ignore[index]
    assert +rows == Counter(str(d["GroundTruth"]) for d in docs)


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


def test_the_alert_rules_evaluate_on_the_real_series_and_a_dead_letter_fires(observed: Observed) -> None:
    # Every rule evaluated without an error ("ok", not "err": a query that fails on real series).
    wait_for(
        "every alert rule evaluated",
        lambda: all(rule["health"] == "ok" for rule in observed.prometheus.rules()),
        60,
        observed.pipeline.alive,
    )
    in_file = [
        rule["alert"]
        for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]
        for rule in group["rules"]
    ]
    assert sorted(rule["name"] for rule in observed.prometheus.rules()) == sorted(in_file)
    # Inference, the sink, CouchDB and the broker are up, the broker's partitions all in sync.
    for alert in ("IoTTargetDown", "IoTCouchDBDown", "IoTKafkaBrokerDown", "IoTKafkaOfflinePartitions"):
        assert observed.prometheus.firing(alert, "job") == set(), alert
    assert observed.prometheus.query('up{job="kafka"}')[0]["value"][1] == "1"
    # A bad image now, dead-lettered by both services that read the topic (last in this module, as
    # it changes the counts above). Those sent at the start may have been counted before the
    # first scrape, where `increase` cannot see them; those seen fire too, for their own reasons.
    observed.pipeline.send_raw(observed.pipeline.images_topic, [b"not an image either"])
    expected = {("inference", "not_json"), ("sink", "not_json")}
    firing = wait_for(
        "IoTDeadLetters firing for inference and sink",
        lambda: (
            found
            if expected <= (found := observed.prometheus.firing("IoTDeadLetters", "service", "reason"))
            else None
        ),
        60,
        observed.pipeline.alive,
    )
    assert {service for service, _ in firing} == {"inference", "sink"}


def _value(observed: Observed, expr: str) -> float:
    [sample] = observed.prometheus.query(expr)
    return float(sample["value"][1])  # type: ignore[index]


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
