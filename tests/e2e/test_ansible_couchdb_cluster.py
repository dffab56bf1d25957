"""Outgrowing one CouchDB: site.yml run again with [couchdb] = vm5, vm6, vm7, a three-node cluster
(_cluster_setup, n = 3), then the node the sink writes to is killed while images flow.

It runs after test_ansible_converge.py (file order) on the same deployment: vm1-vm4 keep their
roles, the sink on vm4 now gets the three nodes' URLs, and the producer sends CLUSTER_IMAGES
images, one a second (a changed count makes the playbook run it again). vm4's own CouchDB of the
first deployment is left running and unused.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from testbed.waiting import wait_for
from tests.e2e.ansible import PlaybookRun, run_playbook, write_inventory
from tests.e2e.conftest import Deployment
from tests.e2e.hosts import Host, restart_host

NODES = ("vm5", "vm6", "vm7")
CLUSTER_IMAGES = 30


@dataclass
class Cluster:
    deployment: Deployment
    run: PlaybookRun
    started_at: float  # before the playbook ran: the audit counts the images sent since

    @property
    def nodes(self) -> list[Host]:
        return [self.deployment.hosts[name] for name in NODES]

    def url(self, node: str) -> str:
        return f"https://{self.deployment.hosts[node].address}:6984"

    def admin(self, node: str, path: str) -> Any:
        auth = ("admin", self.deployment.couchdb_password)
        response = requests.get(
            f"{self.url(node)}/{path}", auth=auth, verify=str(self.deployment.ca_file), timeout=30
        )
        response.raise_for_status()
        return response.json()

    def complete_documents(self, node: str) -> int:
        """Documents holding image and prediction, as node NODE of the cluster serves them."""
        try:
            rows = self.admin(node, "img_db/_all_docs?include_docs=true")["rows"]
        except requests.RequestException:
            return -1
        return sum("InferredValue" in r["doc"] and "GroundTruth" in r["doc"] for r in rows)


@pytest.fixture(scope="module")
def cluster(deployment: Deployment, workdir: Path) -> Iterator[Cluster]:
    # On a machine with cgroup v1 (this one), a host that was booted before a sibling host was
    # rebooted can no longer start containers (runc: "stat /sys/fs/cgroup/systemd/...: no such
    # file"); it can again after its own reboot. The converge tests rebooted vm1 and vm3, so the
    # hosts that start containers here (vm4 restarts the sink) are rebooted first.
    for name in ("vm4", *NODES):
        restart_host(deployment.hosts[name])
    inventory = workdir / "inventory-cluster.ini"
    write_inventory(inventory, deployment.hosts, workdir / "ssh" / "id_ed25519", couchdb=NODES)
    extra_vars = {
        **deployment.extra_vars,
        "vault_couchdb_erlang_cookie": secrets.token_hex(24),
        "iot_producer_count": CLUSTER_IMAGES,
    }
    started_at = time.time()
    yield Cluster(deployment, run_playbook(inventory, extra_vars, workdir), started_at)


def test_the_playbook_forms_a_three_node_cluster(cluster: Cluster) -> None:
    assert cluster.run.returncode == 0, cluster.run.output[-6000:]
    recap = cluster.run.recap()
    assert all(c["failed"] == 0 and c["unreachable"] == 0 for c in recap.values()), recap
    addresses = {f"couchdb@{host.address}" for host in cluster.nodes}
    for node in NODES:
        membership = cluster.admin(node, "_membership")
        assert set(membership["cluster_nodes"]) == set(membership["all_nodes"]) == addresses, node
    assert cluster.admin("vm6", "img_db")["cluster"]["n"] == 3
    assert all(len(copies) == 3 for copies in cluster.admin("vm7", "img_db/_shards")["shards"].values())


def test_a_couchdb_node_killed_while_images_flow_loses_nothing(cluster: Cluster) -> None:
    vm1, vm4, vm5 = (cluster.deployment.hosts[name] for name in ("vm1", "vm4", "vm5"))
    # The sink writes to vm5, the first node it is given: kill it once the first images are
    # stored, with no clean shutdown; systemd starts it again after RestartSec (10 s).
    stored = wait_for(
        "the first images in the cluster",
        lambda: n if (n := cluster.complete_documents("vm6")) >= 3 else None,
        300,
    )
    vm5.sh("docker kill couchdb")
    assert stored < CLUSTER_IMAGES, "vm5 went down after every image was stored: nothing was proven"

    wait_for(
        f"{CLUSTER_IMAGES} complete documents, read through vm6",
        lambda: cluster.complete_documents("vm6") == CLUSTER_IMAGES,
        300,
    )
    state = vm1.sh("systemctl show iot-producer --property=Result --property=ActiveState", check=False)
    assert "Result=success" in state, state
    sink_log = vm4.sh("journalctl -u iot-sink --no-pager", check=False)
    assert f"CouchDB node https://{vm5.address}:6984 did not answer" in sink_log

    # The audit, run in the sink's container with its settings, counts what was sent since the
    # cluster run against what the cluster holds.
    since = str(int(cluster.started_at))
    report = json.loads(vm4.sh(f"docker exec iot-sink iot-audit --json --since {since}", check=False))
    assert report["lost"]["count"] == report["extra"]["count"] == 0, report
    assert report["produced"] == report["complete"] == CLUSTER_IMAGES, report

    # vm5 is back and serves every document again.
    wait_for(
        "vm5 serving every document again",
        lambda: cluster.complete_documents("vm5") == CLUSTER_IMAGES,
        300,
    )
