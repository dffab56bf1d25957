"""The host alerts and the dashboard's Hosts row, proven against the real thing: Debian's node
exporter (what every VM runs) scraped as job `node`, with the `host` label the VMs' scrape config
gives each target, by a real Prometheus that loads deploy/prometheus/alerts.yml. Needs no Kafka or
CouchDB: both servers run here on free loopback ports, one module's worth."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testbed.ports import free_port
from testbed.prometheus_api import PrometheusAPI
from testbed.waiting import wait_for
from tests.deploy.conftest import find_tool
from tests.deploy.test_alert_rules import DASHBOARD, NODE_EXPORTER_SERIES, RULES

HOST = "vm-test"
HOST_GROUP = "iot-hosts"
# The node exporter's series a host rule selects, with their matchers (`up{job="node"}` too).
SELECTOR = re.compile(r"\b(?:up|node_\w+)(?:\{[^}]*\})?")


@dataclass
class Server:
    """A server binary in its own process, its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stopped: bool = False

    def alive(self) -> None:
        if not self.stopped and self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def start(name: str, args: list[str], workdir: Path) -> Server:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    return Server(name, proc, log)


@dataclass
class Hosts:
    prometheus: PrometheusAPI
    exporter: str
    servers: dict[str, Server] = field(default_factory=dict)

    def alive(self) -> None:
        for server in self.servers.values():
            server.alive()


def scraped(hosts: Hosts) -> list[dict[str, Any]] | None:
    """`up` of the node job once Prometheus has scraped the exporter; None before (or while
    Prometheus does not answer yet)."""
    try:
        return hosts.prometheus.query('up{job="node"} == 1') or None
    except requests.RequestException:
        return None


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    workdir = tmp_path_factory.mktemp("host-metrics")
    exporter_address = f"127.0.0.1:{free_port()}"
    prometheus_address = f"127.0.0.1:{free_port()}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        # As deploy/ansible/roles/monitoring/templates/prometheus.yml.j2 writes it for each VM.
        "scrape_configs": [
            {
                "job_name": "node",
                "static_configs": [{"targets": [exporter_address], "labels": {"host": HOST}}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    hosts = Hosts(PrometheusAPI(f"http://{prometheus_address}"), f"http://{exporter_address}")
    commands = {
        "node-exporter": [find_tool("prometheus-node-exporter"), f"--web.listen-address={exporter_address}"],
        "prometheus": [
            find_tool("prometheus"),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={prometheus_address}",
        ],
    }
    with ExitStack() as stack:  # stopped in reverse order: Prometheus, then the exporter
        for name, command in commands.items():
            server = start(name, command, workdir)
            stack.callback(server.stop)
            hosts.servers[name] = server
        wait_for("Prometheus's first scrape of the node exporter", lambda: scraped(hosts), 60, hosts.alive)
        yield hosts


def hosts_row() -> list[dict[str, Any]]:
    """The panels of the dashboard's Hosts row: those after it, up to the next row."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    [start_at] = [i for i, p in enumerate(panels) if p["type"] == "row" and p["title"].startswith("Hosts")]
    row = []
    for panel in panels[start_at + 1 :]:
        if panel["type"] == "row":
            break
        row.append(panel)
    return row


def host_rules() -> list[dict[str, Any]]:
    [group] = [g for g in yaml.safe_load(RULES.read_text())["groups"] if g["name"] == HOST_GROUP]
    return list(group["rules"])


def used_percent(path: str) -> float:
    """What the node exporter reports for the file system at `path`: all but what an unprivileged
    user may still write (f_bavail), of its size (f_blocks)."""
    stat = os.statvfs(path)
    return 100 * (1 - stat.f_bavail / stat.f_blocks)


def test_the_node_exporter_exports_every_series_the_rules_and_the_dashboard_read(hosts: Hosts) -> None:
    text = requests.get(f"{hosts.exporter}/metrics", timeout=10).text
    names = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    missing = NODE_EXPORTER_SERIES - names
    assert not missing, f"tests/deploy/test_alert_rules.py names series the exporter lacks: {sorted(missing)}"


def test_every_hosts_panel_shows_a_percent_per_host(hosts: Hosts) -> None:
    panels = hosts_row()
    assert [p["title"] for p in panels] == [
        "CPU used per host",
        "Memory used per host",
        "Disk used per mount per host",
    ]
    for panel in panels:
        assert panel["fieldConfig"]["defaults"]["unit"] == "percent"
        for target in panel["targets"]:
            expr = target["expr"]
            assert "{{host}}" in target["legendFormat"], panel["title"]
            # rate() needs two scrapes: poll until there is a value.
            series = wait_for(f"data for {expr}", partial(hosts.prometheus.query, expr), 60, hosts.alive)
            for sample in series:
                labels, value = sample["metric"], float(sample["value"][1])
                assert labels.get("host") == HOST, f"{panel['title']}: {labels}"
                assert 0 <= value <= 100, f"{panel['title']}: {labels} at {value}"
                if labels.get("mountpoint") == "/":
                    # The exporter runs here: its figure is what statvfs says now, give or take
                    # what was written since the scrape.
                    assert abs(value - used_percent("/")) < 1, labels


def test_the_disk_panel_shows_the_disks_and_not_the_memory_file_systems(hosts: Hosts) -> None:
    [disk] = [p for p in hosts_row() if p["title"].startswith("Disk")]
    shown = {s["metric"]["mountpoint"] for s in hosts.prometheus.query(disk["targets"][0]["expr"])}
    exported = hosts.prometheus.query('node_filesystem_size_bytes{job="node"}')
    in_memory = {s["metric"]["mountpoint"] for s in exported if s["metric"]["fstype"] in ("tmpfs", "ramfs")}
    assert shown, "no file system on this machine's disks is shown"
    assert not shown & in_memory


def test_the_host_rules_evaluate_on_series_labelled_with_their_host(hosts: Hosts) -> None:
    names = [rule["alert"] for rule in host_rules()]
    assert names == ["IoTHostDown", "IoTHostDiskFull", "IoTHostDiskFillingUp", "IoTHostMemoryPressure"]

    def evaluated() -> bool:
        """Every rule evaluated at least once, without an error, on the real series."""
        rules = hosts.prometheus.rules(HOST_GROUP)
        return bool(rules) and all(
            r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules
        )

    wait_for("every host rule evaluated", evaluated, 60, hosts.alive)
    assert sorted(r["name"] for r in hosts.prometheus.rules(HOST_GROUP)) == sorted(names)
    for rule in host_rules():
        # Each series the rule reads is there, labelled with the host, so its alerts are too.
        for selector in set(SELECTOR.findall(rule["expr"])):
            series = hosts.prometheus.query(selector)
            assert series, f"{rule['alert']}: nothing matches {selector}"
            assert {s["metric"].get("host") for s in series} == {HOST}, f"{rule['alert']}: {selector}"
        # What the whole expression finds (nothing on a healthy machine) is labelled too.
        for sample in hosts.prometheus.query(rule["expr"]):
            assert sample["metric"].get("host") == HOST, rule["alert"]
    assert hosts.prometheus.query(host_rules()[0]["expr"]) == [], (
        "IoTHostDown's expression finds the host down"
    )


# Last in this module: it stops the node exporter.
def test_a_stopped_node_exporter_makes_iothostdown_pending_for_its_host(hosts: Hosts) -> None:
    hosts.servers["node-exporter"].stop()

    def pending() -> list[dict[str, Any]]:
        [rule] = [r for r in hosts.prometheus.rules(HOST_GROUP) if r["name"] == "IoTHostDown"]
        return [a for a in rule["alerts"] if a["state"] == "pending"]

    [alert] = wait_for("IoTHostDown pending", pending, 60, hosts.alive)
    assert alert["labels"] == {
        "alertname": "IoTHostDown",
        "severity": "critical",
        "job": "node",
        "instance": hosts.exporter.removeprefix("http://"),
        "host": HOST,
    }
    assert alert["annotations"]["summary"] == f"host {HOST} is down"
