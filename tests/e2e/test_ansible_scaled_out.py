"""Outgrowing one broker and one CouchDB: site.yml run again with [broker] = [couchdb] = vm5, vm6,
vm7 and [inference] = vm2, vm3, on the hosts test_ansible_converge.py deployed (file order).

First in ZooKeeper mode, the client's (Kafka 3.9.2 with a 3-node ensemble), beside a three-node
CouchDB cluster (_cluster_setup, n = 3): it converges, and the CouchDB node the sink writes to is
killed while the run's images flow. A broker whose data is wiped is started again by the
playbook and catches up, in a run that also rotates the services' passwords (Kafka's and
CouchDB's) and rolls a changed setting through the other brokers; then the broker that leads
iot-topic is `kill -9`ed while images flow. The audit, which recomputes the run's IDs instead of
trusting the broker, finds nothing lost either time.

Then KRaft (Kafka 4.4.0, each broker also a controller) on the same hosts, their Kafka data
emptied as a switch between modes needs: it converges, a wiped broker is formatted with the
cluster's id and catches up, and its leader is killed while images flow.

About 46 minutes on the 2-core machine, beside about 35 for the rest of tests/e2e and 31 for
`make test`: more than CI's 90 would hold with a margin. So the whole file is marked `scaled_out`, which .ci/run deselects;
`make test-deploy` runs it.

Both clusters share the three hosts and one converge per step, so the hosts boot once. That a
second run changes nothing is checked on the four-VM deployment (test_ansible_converge.py). vm2
leaves the broker group (its old broker stopped, as an operator retiring it would) and runs a
second inference instance; the sink and monitoring stay on vm4, whose own CouchDB of the first
deployment is left running and unused.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from testbed.waiting import wait_for
from tests.e2e.ansible import PlaybookRun, run_playbook, write_inventory
from tests.e2e.conftest import KAFKA_ADMIN_CONFIG, Deployment
from tests.e2e.hosts import Host, restart_host

pytestmark = pytest.mark.scaled_out

BROKERS = NODES = ("vm5", "vm6", "vm7")  # Kafka's brokers and CouchDB's nodes
INFERENCE = ("vm2", "vm3")
IMAGES = 40  # one a second: a CouchDB node or a broker dies while they flow
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
class Layout:
    """The three hosts' clusters in one Kafka mode, and the playbook runs that made them."""

    deployment: Deployment
    inventory: Path
    extra_vars: dict[str, Any]
    mode: str
    runs: list[PlaybookRun]
    since: float  # before the layout's first run: the audit counts the images sent since

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

    def couchdb_url(self, node: str = NODES[0]) -> str:
        return f"https://{self.host(node).address}:6984"

    def couchdb_takes(self, user: str, password: str) -> bool:
        """Whether the CouchDB cluster (its first node, over TLS) takes USER's login with PASSWORD."""
        response = requests.get(
            f"{self.couchdb_url()}/_session",
            auth=(user, password),
            verify=str(self.deployment.ca_file),
            timeout=30,
        )
        assert response.status_code in (200, 401), response.text
        return response.status_code == 200

    def couchdb_admin(self, node: str, path: str) -> Any:
        auth = ("admin", self.deployment.couchdb_password)
        response = requests.get(
            f"{self.couchdb_url(node)}/{path}", auth=auth, verify=str(self.deployment.ca_file), timeout=30
        )
        response.raise_for_status()
        return response.json()

    def complete_documents(self, node: str) -> int:
        """Documents holding image and prediction, as CouchDB node NODE serves them."""
        try:
            rows = self.couchdb_admin(node, "img_db/_all_docs?include_docs=true")["rows"]
        except requests.RequestException:
            return -1
        return sum("InferredValue" in r["doc"] and "GroundTruth" in r["doc"] for r in rows)

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

    def cluster_id(self, broker: str) -> str:
        """The KRaft cluster id BROKER's data folder was formatted with."""
        return self.host(broker).sh("grep ^cluster.id= /var/lib/kafka/data/meta.properties")

    def wait_caught_up(self, broker: str) -> None:
        """Until BROKER, restarted with its data gone, is back in sync, as it sees iot-topic too:
        three replicas in every partition's ISR."""
        wait_for(f"{broker} back in sync", lambda: self.in_sync(broker), 300)
        isrs = re.findall(r"Isr: ([\d,]+)", self.describe("--topic", "iot-topic", on=broker))
        assert isrs and all(len(isr.split(",")) == 3 for isr in isrs), isrs

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


def kill_the_leader_while_images_flow(cluster: Layout) -> tuple[str, float, dict[str, Any]]:
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
def zookeeper(deployment: Deployment, workdir: Path) -> Layout:
    hosts = deployment.hosts
    # The old single broker is retired: it leaves the inventory, so the operator stops it.
    hosts["vm2"].sh("systemctl disable --now kafka zookeeper")
    # On a machine with cgroup v1 (this one), a host that was booted before a sibling host was
    # rebooted can no longer start containers (runc: "stat /sys/fs/cgroup/systemd/...: no such
    # file"); it can again after its own reboot. The converge tests rebooted vm1 and vm3, so the
    # hosts that start containers here are rebooted first: vm2 (inference), vm4 (the sink
    # restarted) and the new hosts (CouchDB).
    restart_host(*(hosts[name] for name in ("vm2", "vm4", *NODES)))
    inventory = workdir / "clusters" / "inventory.ini"
    inventory.parent.mkdir()
    write_inventory(
        inventory, hosts, workdir / "ssh" / "id_ed25519", couchdb=NODES, broker=BROKERS, inference=INFERENCE
    )
    extra_vars = {
        **deployment.extra_vars,
        "iot_kafka_mode": "zookeeper",
        "kafka_heap_opts": "-Xms256m -Xmx512m",
        "vault_couchdb_erlang_cookie": secrets.token_hex(24),
        # A changed count makes the playbook start the producer again: the first test's images.
        "iot_producer_count": IMAGES,
    }
    cluster = Layout(deployment, inventory, extra_vars, "zookeeper", [], since=time.time())
    cluster.converge()
    return cluster


def test_the_zookeeper_layout_forms_an_ensemble_and_a_couchdb_cluster(zookeeper: Layout) -> None:
    [run] = zookeeper.runs
    assert run.returncode == 0, run.output[-6000:]
    assert sorted(zookeeper.zookeeper_mode(b) for b in BROKERS) == ["follower", "follower", "leader"]
    described = zookeeper.describe("--topic", "iot-topic")
    assert "ReplicationFactor: 3" in described and "min.insync.replicas=2" in described, described
    addresses = {f"couchdb@{zookeeper.host(node).address}" for node in NODES}
    for node in NODES:
        membership = zookeeper.couchdb_admin(node, "_membership")
        assert set(membership["cluster_nodes"]) == set(membership["all_nodes"]) == addresses, node
    assert zookeeper.couchdb_admin("vm6", "img_db")["cluster"]["n"] == 3
    shards = zookeeper.couchdb_admin("vm7", "img_db/_shards")["shards"]
    assert all(len(copies) == 3 for copies in shards.values()), shards


def test_a_couchdb_node_killed_while_images_flow_loses_nothing(zookeeper: Layout) -> None:
    vm4, vm5 = zookeeper.host("vm4"), zookeeper.host("vm5")
    # The converge started the producer's run. The sink writes to vm5, the first node it is
    # given: kill it once the first images are stored, with no clean shutdown; systemd starts it
    # again after RestartSec (10 s).
    stored = wait_for(
        "the first images in the cluster",
        lambda: n if (n := zookeeper.complete_documents("vm6")) >= 3 else None,
        300,
    )
    vm5.sh("docker kill couchdb")
    assert stored < IMAGES, "vm5 went down after every image was stored: nothing was proven"

    wait_for(
        f"{IMAGES} complete documents, read through vm6",
        lambda: zookeeper.complete_documents("vm6") == IMAGES,
        300,
    )
    wait_for("the producer's run to succeed", zookeeper.producer_succeeded, 120)
    sink_log = vm4.sh("journalctl -u iot-sink --no-pager", check=False)
    assert f"CouchDB node {zookeeper.couchdb_url('vm5')} did not answer" in sink_log

    # The audit, run in the sink's container with its settings, counts what was sent since the
    # cluster run against what the cluster holds.
    since = str(int(zookeeper.since))
    report = json.loads(vm4.sh(f"docker exec iot-sink iot-audit --json --since {since}", check=False))
    assert report["lost"]["count"] == report["extra"]["count"] == 0, report
    assert report["produced"] == report["complete"] == IMAGES, report

    # vm5 is back and serves every document again.
    wait_for("vm5 serving every document again", lambda: zookeeper.complete_documents("vm5") == IMAGES, 300)


def test_a_wiped_broker_is_rebuilt_and_a_changed_setting_rolls_through_the_others(zookeeper: Layout) -> None:
    vm7 = zookeeper.host("vm7")
    vm7.sh("systemctl stop kafka && rm -rf /var/lib/kafka/data")
    # The same run changes a broker setting: vm7 (stopped) starts with it, vm5 and vm6 restart
    # for it one at a time. It also rotates the services' passwords (the next test's images go
    # through with the new ones): the vault changed, site.yml run again.
    zookeeper.extra_vars["kafka_log_retention_hours"] = 167
    old = {key: zookeeper.extra_vars[key] for key in ROTATED}
    zookeeper.extra_vars |= {key: secrets.token_urlsafe(18) for key in ROTATED}
    started = zookeeper.started_at()
    vm4 = zookeeper.host("vm4")
    since = vm4.sh("date '+%Y-%m-%d %H:%M:%S'").strip()
    run = zookeeper.converge()  # starts the broker, which registers under its id again
    assert run.returncode == 0, run.output[-6000:]
    for key, (kind, user) in ROTATED.items():
        takes = zookeeper.kafka_takes if kind == "kafka" else zookeeper.couchdb_takes
        assert takes(user, zookeeper.extra_vars[key]) and not takes(user, old[key]), f"{key} not rotated"
    now = zookeeper.started_at()
    assert all(now[unit] != started[unit] for unit in started), f"not all restarted: {started} {now}"
    # The sink was stopped as soon as its CouchDB password changed, so it never failed the 5
    # logins after which CouchDB locks its user out for 5 minutes, its restarted self too.
    sink_log = vm4.sh(f"journalctl -u iot-sink --no-pager --since '{since}'")
    assert "temporarily locked" not in sink_log, sink_log[-3000:]
    stop = run.output.split("TASK [Stop the sinks whose CouchDB password just changed")[1]
    assert "changed:" in stop.split("TASK [")[0], stop[:2000]
    zookeeper.wait_caught_up("vm7")
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


def test_the_zookeeper_leader_killed_while_images_flow_loses_nothing(zookeeper: Layout) -> None:
    victim, stall, report = kill_the_leader_while_images_flow(zookeeper)
    print(f"ZooKeeper: killed {victim}; every iot-topic partition took records again after {stall:.1f}s")
    assert report["lost"]["count"] == 0 and report["produced"] == report["complete"] == IMAGES, report


# --- KRaft ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kraft(zookeeper: Layout) -> Layout:
    # A switch between modes needs empty data folders: no migration is done.
    for broker in BROKERS:
        zookeeper.host(broker).sh("systemctl disable --now kafka zookeeper && rm -rf /var/lib/kafka/data")
    extra_vars = {**zookeeper.extra_vars, "iot_kafka_mode": "kraft"}
    cluster = Layout(zookeeper.deployment, zookeeper.inventory, extra_vars, "kraft", [], since=time.time())
    cluster.converge()
    return cluster


def test_the_playbook_forms_a_kraft_cluster(kraft: Layout) -> None:
    [run] = kraft.runs
    assert run.returncode == 0, run.output[-6000:]
    cluster_ids = {kraft.cluster_id(b) for b in BROKERS}
    assert len(cluster_ids) == 1, cluster_ids
    described = kraft.describe("--topic", "iot-topic")
    assert "ReplicationFactor: 3" in described and "min.insync.replicas=2" in described, described
    assert "Apache Kafka 4.4.0" in kraft.host("vm6").sh("systemctl cat kafka")


def test_a_wiped_kraft_broker_is_formatted_with_the_clusters_id_and_catches_up(kraft: Layout) -> None:
    vm7 = kraft.host("vm7")
    cluster_id = kraft.cluster_id("vm5")
    vm7.sh("systemctl stop kafka && rm -rf /var/lib/kafka/data")
    run = kraft.converge()  # formats the new disk with the cluster's id, read from vm5, and starts it
    assert run.returncode == 0, run.output[-6000:]
    assert kraft.cluster_id("vm7") == cluster_id
    kraft.wait_caught_up("vm7")


def test_the_kraft_leader_killed_while_images_flow_loses_nothing(kraft: Layout) -> None:
    victim, stall, report = kill_the_leader_while_images_flow(kraft)
    print(f"KRaft: killed {victim}; every iot-topic partition took records again after {stall:.1f}s")
    assert report["lost"]["count"] == 0 and report["produced"] == report["complete"] == IMAGES, report
