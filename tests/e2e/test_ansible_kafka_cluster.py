"""Outgrowing one broker: site.yml run with [broker] = vm5, vm6, vm7 and [inference] = vm2, vm3.

First in KRaft mode (Kafka 4.4.0, each broker also a controller): it converges and changes nothing
the second time; a broker whose data is wiped is formatted and started again by the playbook
and catches up, in a run that also rotates the services' passwords (Kafka's and CouchDB's); then
the broker that leads iot-topic is `kill -9`ed while images flow, and the audit, which
recomputes the run's IDs instead of trusting the broker, finds nothing lost. Then
in ZooKeeper mode (Kafka 3.9.2 with a 3-node ensemble) on the same hosts, emptied first as a
switch between modes needs: it converges and survives a broker kill with nothing lost.

It runs after the CouchDB cluster test (file order) on the same hosts: the sink on vm4 goes
back to vm4's own CouchDB, vm2 leaves the broker group (its old broker is stopped, as an operator
retiring it would) and runs a second inference instance.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from testbed.waiting import wait_for
from tests.e2e.ansible import PlaybookRun, run_playbook, write_inventory
from tests.e2e.conftest import KAFKA_ADMIN_CONFIG, Deployment
from tests.e2e.hosts import Host, restart_host

BROKERS = ("vm5", "vm6", "vm7")
INFERENCE = ("vm2", "vm3")
IMAGES = 40  # one a second: the broker dies while they flow
# The passwords a rotation changes (vault variable: where, whose login). The admin's is not: a
# KRaft cluster's admin login can only be changed by hand (deploy/ansible/README.md).
ROTATED = {
    "vault_kafka_producer_password": ("kafka", "iot-producer"),
    "vault_kafka_inference_password": ("kafka", "iot-inference"),
    "vault_kafka_sink_password": ("kafka", "iot-sink"),
    "vault_kafka_audit_password": ("kafka", "iot-audit"),
    "vault_couchdb_sink_password": ("couchdb", "iot_sink"),
    "vault_couchdb_reader_password": ("couchdb", "iot_reader"),
}
TOOL_LOG_CONFIG = {
    "kraft": "-Dlog4j2.configurationFile=/etc/kafka/tools-log4j2.properties",
    "zookeeper": "-Dlog4j.configuration=file:/etc/kafka/tools-log4j.properties",
}


@dataclass
class KafkaCluster:
    deployment: Deployment
    inventory: Path
    extra_vars: dict[str, Any]
    mode: str
    runs: list[PlaybookRun]

    def host(self, name: str) -> Host:
        return self.deployment.hosts[name]

    def converge(self) -> PlaybookRun:
        run = run_playbook(self.inventory, self.extra_vars, self.inventory.parent)
        self.runs.append(run)
        return run

    def tool(
        self, main_class: str, *args: str, on: str = BROKERS[0], config: str = KAFKA_ADMIN_CONFIG
    ) -> str:
        """A Kafka command-line tool, run on broker ON against its own listener; its stdout. As
        the admin, or with another login's settings in CONFIG: then its stderr too, and a
        failure is an answer."""
        host = self.host(on)
        quoted = " ".join(f"'{a}'" for a in args)
        as_admin = config == KAFKA_ADMIN_CONFIG
        return host.sh(
            f"java {TOOL_LOG_CONFIG[self.mode]} -cp '/opt/kafka/libs/*' {main_class}"
            f" --bootstrap-server {host.address}:9092 --command-config {config} {quoted}"
            + ("" if as_admin else " 2>&1"),
            timeout=120,
            check=as_admin,
        )

    def kafka_takes(self, user: str, password: str) -> bool:
        """Whether the brokers take USER's SCRAM login with PASSWORD (the admin's settings file,
        another login in it)."""
        config = f"/root/{user}.properties"  # root only, like the admin's
        self.host(BROKERS[0]).sh(
            f'sed \'s/username="[^"]*" password="[^"]*"/username="{user}" password="{password}"/\''
            f" {KAFKA_ADMIN_CONFIG} > {config}"
        )
        try:
            out = self.tool("org.apache.kafka.tools.TopicCommand", "--list", config=config)
        finally:
            self.host(BROKERS[0]).sh(f"rm -f {config}")
        assert "iot-topic" in out or "Authentication failed" in out, out[-2000:]
        return "Authentication failed" not in out

    def couchdb_takes(self, user: str, password: str) -> bool:
        """Whether CouchDB (vm4, over TLS) takes USER's login with PASSWORD."""
        deployment = self.deployment
        response = requests.get(
            f"{deployment.couchdb_url}/_session",
            auth=(user, password),
            verify=str(deployment.ca_file),
            timeout=30,
        )
        assert response.status_code in (200, 401), response.text
        return response.status_code == 200

    def started_at(self) -> dict[str, str]:
        """When systemd last started each of the long-running services."""
        return self.consumers_show("ActiveEnterTimestampMonotonic")

    def describe(self, *args: str, on: str = BROKERS[0]) -> str:
        return self.tool("org.apache.kafka.tools.TopicCommand", "--describe", *args, on=on)

    def end_offsets(self, on: str) -> dict[int, int]:
        """iot-topic's end offset per partition, as broker ON's cluster sees it."""
        out = self.tool("org.apache.kafka.tools.GetOffsetShell", "--topic", "iot-topic", on=on)
        return {int(p): int(o) for p, o in re.findall(r"^iot-topic:(\d+):(\d+)$", out, re.M)}

    def leader(self) -> str:
        """The broker (host) that leads the most partitions of iot-topic: broker id K is the K-th."""
        leaders = Counter(
            re.findall(r"Partition: \d+\s+Leader: (\d+)", self.describe("--topic", "iot-topic"))
        )
        return BROKERS[int(leaders.most_common(1)[0][0]) - 1]

    def in_sync(self, on: str = BROKERS[0]) -> bool:
        """Every replica of every partition in sync (and the tool answered)."""
        try:
            return self.describe("--under-replicated-partitions", on=on).strip() == ""
        except Exception:  # a broker still settling: not in sync yet
            return False

    def start_producer_run(self) -> str:
        """Start the producer again (its unit is a one-shot run) and return the new run's id."""
        # A run still sending (a converge that changed its password restarts it) would be stopped
        # by the restart and resumed under its old id, not begun anew: let it finish first.
        wait_for("the producer's previous run to succeed", self.producer_succeeded, 300)
        vm1 = self.host("vm1")
        since = vm1.sh("date '+%Y-%m-%d %H:%M:%S'").strip()
        vm1.sh("systemctl restart --no-block iot-producer")  # a one-shot unit that stays active

        def run_id() -> str | None:
            log = vm1.sh(f"journalctl -u iot-producer --no-pager --since '{since}'", check=False)
            found = re.search(r"new run (\S+) \(kept in", log)
            return found[1] if found else None

        return wait_for("the producer's new run", run_id, 180)

    def producer_succeeded(self) -> bool:
        # One-shot, RemainAfterExit: "activating" while it sends, "active" once it succeeded.
        state = self.host("vm1").sh("systemctl show iot-producer -p ActiveState -p Result", check=False)
        return "ActiveState=active" in state and "Result=success" in state

    def audit(self, run_id: str) -> dict[str, Any]:
        """iot-audit --run-id in the sink's container: the run's IDs recomputed, no broker read."""
        out = self.host("vm4").sh(
            f"docker exec iot-sink iot-audit --json --run-id {run_id} --count {IMAGES}", check=False
        )
        report: dict[str, Any] = json.loads(out)
        return report

    def zookeeper_mode(self, broker: str) -> str:
        """leader, follower or standalone: ZooKeeper's answer to `srvr` on BROKER's address."""
        host = self.host(broker)
        script = (
            f"import socket; s = socket.create_connection(('{host.address}', 2181), 5);"
            " s.sendall(b'srvr'); print(s.makefile().read())"
        )
        found = re.search(r"Mode: (\w+)", host.sh(f'python3 -c "{script}"', check=False))
        return found[1] if found else "not serving"

    def restarts(self) -> dict[str, str]:
        """How often systemd restarted each service after it exited unasked."""
        return self.consumers_show("NRestarts")

    def consumers_show(self, prop: str) -> dict[str, str]:
        """systemd's PROP of each long-running service: inference on its hosts, the sink on vm4."""
        units = [(h, "iot-inference") for h in INFERENCE] + [("vm4", "iot-sink")]
        return {
            f"{h} {u}": self.host(h).sh(f"systemctl show {u} -p {prop} --value", check=False).strip()
            for h, u in units
        }


def kill_the_leader_while_images_flow(cluster: KafkaCluster) -> tuple[str, float, dict[str, Any]]:
    """kill -9 the leading broker once the run's first images are in the topic: returns the
    victim, the stall (seconds until every partition took records again, to about 2 s: each read
    is a JVM) and the audit of the run once the producer is done."""
    restarts_before = cluster.restarts()
    run_id = cluster.start_producer_run()
    first = cluster.end_offsets(BROKERS[0])
    wait_for("the run's first images in iot-topic",
             lambda: sum(cluster.end_offsets(BROKERS[0]).values()) >= sum(first.values()) + 5, 180)  # fmt: skip
    victim = cluster.leader()
    survivor = next(b for b in BROKERS if b != victim)
    before = cluster.end_offsets(survivor)
    killed = time.monotonic()
    cluster.host(victim).sh("systemctl kill --signal=KILL kafka")
    wait_for(
        "every partition of iot-topic taking records again",
        lambda: all(n > before[p] for p, n in cluster.end_offsets(survivor).items()),
        120,
    )
    stall = time.monotonic() - killed
    wait_for("the producer's run to succeed", cluster.producer_succeeded, 300)
    report = wait_for(
        f"{IMAGES} complete documents of run {run_id}",
        lambda: r if (r := cluster.audit(run_id))["complete"] == IMAGES else None,
        300,
    )
    # systemd starts the killed broker again (Restart=on-failure); it catches up.
    wait_for("every replica in sync again", lambda: cluster.in_sync(survivor), 300)
    assert cluster.restarts() == restarts_before, "a service exited while the broker was down"
    return victim, stall, report


@pytest.fixture(scope="module")
def kraft(deployment: Deployment, workdir: Path) -> Iterator[KafkaCluster]:
    hosts = deployment.hosts
    # The old single broker is retired: it leaves the inventory, so the operator stops it.
    hosts["vm2"].sh("systemctl disable --now kafka zookeeper")
    # vm2 starts containers now (inference); on this machine's cgroup v1 a host must have been
    # rebooted after its siblings were to do so (see test_ansible_couchdb_cluster.py).
    restart_host(hosts["vm2"])
    inventory = workdir / "kafka" / "inventory.ini"
    inventory.parent.mkdir()
    write_inventory(inventory, hosts, workdir / "ssh" / "id_ed25519", broker=BROKERS, inference=INFERENCE)
    extra_vars = {
        **deployment.extra_vars,
        "iot_kafka_mode": "kraft",
        "kafka_heap_opts": "-Xms256m -Xmx512m",
        "iot_producer_count": IMAGES,
    }
    cluster = KafkaCluster(deployment, inventory, extra_vars, "kraft", [])
    if cluster.converge().returncode == 0:
        cluster.converge()
    yield cluster


def test_the_playbook_forms_a_kraft_cluster_and_a_second_run_changes_nothing(kraft: KafkaCluster) -> None:
    first, second = kraft.runs
    assert first.returncode == 0, first.output[-6000:]
    assert second.returncode == 0, second.output[-6000:]
    changed = {host: counts["changed"] for host, counts in second.recap().items() if counts["changed"]}
    assert not changed, f"{changed}: {second.changed_tasks()}"
    cluster_ids = {kraft.host(b).sh("grep ^cluster.id= /var/lib/kafka/data/meta.properties") for b in BROKERS}
    assert len(cluster_ids) == 1, cluster_ids
    described = kraft.describe("--topic", "iot-topic")
    assert "ReplicationFactor: 3" in described and "min.insync.replicas=2" in described, described
    assert "Apache Kafka 4.4.0" in kraft.host("vm6").sh("systemctl cat kafka")


def test_a_wiped_broker_is_rebuilt_and_a_changed_setting_rolls_through_the_others(
    kraft: KafkaCluster,
) -> None:
    vm7 = kraft.host("vm7")
    vm7.sh("systemctl stop kafka && rm -rf /var/lib/kafka/data")
    # The same run changes a broker setting: vm7 (stopped) starts with it, vm5 and vm6 restart
    # for it one at a time. It also rotates the services' passwords (the next test's images go
    # through with the new ones): the vault changed, site.yml run again.
    kraft.extra_vars["kafka_log_retention_hours"] = 167
    old = {key: kraft.extra_vars[key] for key in ROTATED}
    kraft.extra_vars |= {key: secrets.token_urlsafe(18) for key in ROTATED}
    started = kraft.started_at()
    vm4 = kraft.host("vm4")
    since = vm4.sh("date '+%Y-%m-%d %H:%M:%S'").strip()
    run = kraft.converge()  # formats the new disk with the cluster's id and starts the broker
    assert run.returncode == 0, run.output[-6000:]
    for key, (kind, user) in ROTATED.items():
        takes = kraft.kafka_takes if kind == "kafka" else kraft.couchdb_takes
        assert takes(user, kraft.extra_vars[key]) and not takes(user, old[key]), f"{key} not rotated"
    now = kraft.started_at()
    assert all(now[unit] != started[unit] for unit in started), f"not all restarted: {started} {now}"
    # The sink was stopped as soon as its CouchDB password changed, so it never failed the 5
    # logins after which CouchDB locks its user out for 5 minutes, its restarted self too.
    sink_log = vm4.sh(f"journalctl -u iot-sink --no-pager --since '{since}'")
    assert "temporarily locked" not in sink_log, sink_log[-3000:]
    stop = run.output.split("TASK [Stop the sinks whose CouchDB password just changed")[1]
    assert "changed:" in stop.split("TASK [")[0], stop[:2000]
    wait_for("vm7 back in sync", lambda: kraft.in_sync("vm7"), 300)
    isrs = re.findall(r"Isr: ([\d,]+)", kraft.describe("--topic", "iot-topic", on="vm7"))
    assert isrs and all(len(isr.split(",")) == 3 for isr in isrs), isrs
    # The rolling-restart play, one batch per broker: each restarted, then waited for until no
    # partition was under-replicated, before the next batch began.
    batches = run.output.split("PLAY [Restart the brokers whose files changed")[1:]
    restarted = [
        b
        for b in BROKERS
        for batch in batches
        if f"changed: [{b}]" in batch.split("TASK [kafka : Wait until no")[0]
    ]
    assert restarted == ["vm5", "vm6"], restarted
    for batch in batches:
        if "TASK [kafka : Restart Kafka" in batch and "changed:" in batch:
            assert "TASK [kafka : Wait until no partition is under-replicated" in batch
    assert "log.retention.hours=167" in vm7.sh("cat /etc/kafka/server.properties")


def test_the_leader_killed_while_images_flow_loses_nothing(kraft: KafkaCluster) -> None:
    victim, stall, report = kill_the_leader_while_images_flow(kraft)
    print(f"KRaft: killed {victim}; every iot-topic partition took records again after {stall:.1f}s")
    assert report["lost"]["count"] == 0 and report["produced"] == report["complete"] == IMAGES, report


@pytest.fixture(scope="module")
def zookeeper(kraft: KafkaCluster) -> KafkaCluster:
    # A switch between modes needs empty data folders: no migration is done.
    for broker in BROKERS:
        kraft.host(broker).sh("systemctl disable --now kafka && rm -rf /var/lib/kafka/data")
    cluster = KafkaCluster(
        kraft.deployment,
        kraft.inventory,
        {**kraft.extra_vars, "iot_kafka_mode": "zookeeper"},
        "zookeeper",
        [],
    )
    cluster.converge()
    return cluster


def test_the_zookeeper_layout_converges_and_survives_a_broker_kill(zookeeper: KafkaCluster) -> None:
    [run] = zookeeper.runs
    assert run.returncode == 0, run.output[-6000:]
    assert sorted(zookeeper.zookeeper_mode(b) for b in BROKERS) == ["follower", "follower", "leader"]
    victim, stall, report = kill_the_leader_while_images_flow(zookeeper)
    print(f"ZooKeeper: killed {victim}; every iot-topic partition took records again after {stall:.1f}s")
    assert report["lost"]["count"] == 0 and report["produced"] == report["complete"] == IMAGES, report
