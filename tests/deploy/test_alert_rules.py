"""The alerting rules (deploy/prometheus/alerts.yml), proven with promtool, and the metrics the
rules and the dashboard query, checked against what the services really export."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import iot_inference.metrics
import iot_shared.metrics
import iot_sink.metrics
from testbed.paths import REPO
from tests.deploy.conftest import find_tool
from tests.markdown import anchors

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
JMX_EXPORTER = REPO / "deploy" / "prometheus" / "kafka-jmx-exporter.yml"
RULE_TESTS = REPO / "tests" / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "iot-pipeline.json"
RUNBOOKS = REPO / "docs" / "operating.md"
assert iot_inference.metrics and iot_shared.metrics and iot_sink.metrics  # imported for their metrics
# Series Prometheus makes itself, not the services.
PROMETHEUS_SERIES = {"up"}
# CouchDB 3.5's own series that the dashboard queries; tests/integration/test_observability.py
# proves on the real server that each query returns data.
COUCHDB_SERIES = {
    "couchdb_httpd_request_methods",
    "couchdb_httpd_status_codes",
    "couchdb_request_time_seconds",
    "couchdb_request_time_seconds_sum",
    "couchdb_request_time_seconds_count",
    "couchdb_document_writes_total",
    "couchdb_httpd_bulk_requests_total",
}


def jmx_exporter_series() -> set[str]:
    """The brokers' series deploy/prometheus/kafka-jmx-exporter.yml makes: each rule's name with
    its $1 replaced by each alternative of the pattern's first group, lower case."""
    made = set()
    for rule in yaml.safe_load(JMX_EXPORTER.read_text())["rules"]:
        first = re.search(r"\(([^()]*)\)", rule["pattern"])
        options = first[1].split("|") if first and "$1" in rule["name"] else [""]
        made |= {rule["name"].replace("$1", option.lower()) for option in options}
    return made


# tests/integration/test_observability.py proves on a real broker that each query returns data.
KAFKA_SERIES = jmx_exporter_series()
# The node exporter's series (Debian's prometheus-node-exporter, on every VM as job `node`) that
# the host rules and the dashboard's Hosts row read; tests/deploy/test_host_metrics.py proves that
# a real node exporter exports each and that every Hosts query returns data from it.
NODE_EXPORTER_SERIES = {
    "node_cpu_seconds_total",
    "node_memory_MemAvailable_bytes",
    "node_memory_MemTotal_bytes",
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
    "node_filesystem_readonly",
}
ALERTS = (
    "IoTTargetDown",
    "IoTCouchDBDown",
    "IoTKafkaBrokerDown",
    "IoTKafkaUnderReplicated",
    "IoTKafkaOfflinePartitions",
    "IoTConsumerLagAgeHigh",
    "IoTConsumerLagGrowing",
    "IoTDeadLetters",
    "IoTDeliveryFailures",
    "IoTSinkWriteRetries",
    "IoTConsumerPaused",
    "IoTServiceStalled",
    "IoTEndToEndLatencyHigh",
    "IoTAccuracyDropped",
    "IoTHostDown",
    "IoTHostDiskFull",
    "IoTHostDiskFillingUp",
    "IoTHostMemoryPressure",
)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def rule_cases() -> Iterator[dict[str, Any]]:
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        yield from test.get("alert_rule_test", [])


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_rules_file_is_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [rule["alert"] for rule in rules()] == list(ALERTS)


def test_every_rule_passes_its_promtool_tests() -> None:
    # Run from the test file's folder: its rule_files path is relative to it.
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    cases = list(rule_cases())
    for alert in ALERTS:
        outcomes = [bool(case["exp_alerts"]) for case in cases if case["alertname"] == alert]
        assert True in outcomes, f"{alert} never fires in {RULE_TESTS.name}"
        assert False in outcomes, f"{alert} is never shown to stay quiet in {RULE_TESTS.name}"


@pytest.mark.parametrize("rule", rules(), ids=lambda r: str(r["alert"]))
def test_every_rule_says_what_happened_and_links_its_runbook(rule: dict[str, Any]) -> None:
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook"}
    assert rule["labels"]["severity"] in ("warning", "critical")
    page, anchor = annotations["runbook"].split("#")
    assert REPO / page == RUNBOOKS
    text = RUNBOOKS.read_text()
    assert anchor == rule["alert"].lower() and anchor in anchors(text)
    runbooks = text.split("\n## Runbooks\n", 1)[1].split("\n## ", 1)[0]
    assert f"\n### {rule['alert']}\n" in runbooks


def exported_series() -> set[str]:
    """The names of every series the services export, as Prometheus stores them."""
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "info": ("_info",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("", "_count", "_sum"),
    }
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("iot_")
        for suffix in suffixes[family.type]
    }


def metric_names(expr: str) -> set[str]:
    """The series an expression selects: names outside strings, label matchers and
    grouping clauses, that are not functions or keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    words = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    keywords = {"and", "or", "unless", "by", "without", "on", "ignoring", "bool", "offset", "inf", "nan"}
    return {w for w in words if w.lower() not in keywords}


def queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [(f"panel {p['title']}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    return panels + [(f"rule {r['alert']}", r["expr"]) for r in rules()]


def test_the_promtool_tests_use_the_series_the_services_export() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    names = {series["series"].split("{")[0] for test in tests for series in test["input_series"]}
    assert names - exported_series() - PROMETHEUS_SERIES - KAFKA_SERIES - NODE_EXPORTER_SERIES == set()


def test_metric_names_are_read_from_expressions() -> None:
    expr = (
        'sum by (le) (rate(a_bucket{job="x"}[5m])) / on (class) label_replace(b, "c", "$1", "d", "(.*)")'
        " > 0.5 and absent(up)"
    )
    assert metric_names(expr) == {"a_bucket", "b", "up"}


def test_every_metric_in_a_rule_or_a_dashboard_query_is_exported() -> None:
    known = exported_series() | PROMETHEUS_SERIES | COUCHDB_SERIES | KAFKA_SERIES | NODE_EXPORTER_SERIES
    assert {"iot_sink_predictions_scored_total", "iot_consumer_paused", "iot_build_info"} <= known
    unknown = []
    for where, expr in queries():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        unknown += [f"{where}: {name}" for name in sorted(names - known)]
    assert not unknown, "metrics that no service exports:\n" + "\n".join(unknown)


def test_the_jmx_exporter_makes_the_series_the_rules_read() -> None:
    assert {
        "kafka_server_replicamanager_underreplicatedpartitions",
        "kafka_controller_kafkacontroller_offlinepartitionscount",
        "kafka_server_brokertopicmetrics_bytesin_total",
    } <= KAFKA_SERIES
