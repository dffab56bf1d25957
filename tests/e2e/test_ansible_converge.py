"""`ansible-playbook site.yml` on four systemd hosts, run twice, then restarts and a reboot.

vm1 producer, vm2 ZooKeeper + Kafka, vm3 inference, vm4 sink + CouchDB + Prometheus, each with
its own address on a private network. What cannot be fetched here comes through the roles'
own variables (see conftest.py): Kafka's release, the images, and stand-ins for CouchDB and
Prometheus; Grafana is switched off. The tests run in file order and share one deployment.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from testbed.waiting import wait_for
from tests.e2e.ansible import PlaybookRun
from tests.e2e.conftest import Deployment
from tests.e2e.hosts import Host, restart_host
from tests.tls import another_ca

NODE_EXPORTER = "prometheus-node-exporter"
UNITS = {
    "vm1": ["iot-firewall", NODE_EXPORTER, "docker"],  # and iot-producer, a oneshot: see below
    "vm2": ["iot-firewall", NODE_EXPORTER, "zookeeper", "kafka"],
    "vm3": ["iot-firewall", NODE_EXPORTER, "docker", "iot-inference", "iot-inference-watchdog.timer"],
    "vm4": [
        "iot-firewall",
        NODE_EXPORTER,
        "docker",
        "couchdb",
        "prometheus",
        "alertmanager",
        "iot-sink",
        "iot-sink-watchdog.timer",
    ],
}
TOPICS = {"iot-topic", "iot-predictions", "iot-dlq"}


def assert_clean_recap(run: PlaybookRun) -> dict[str, dict[str, int]]:
    recap = run.recap()
    assert run.returncode == 0, f"ansible-playbook exited {run.returncode}:\n{run.output[-6000:]}"
    assert set(recap) == set(UNITS), recap
    for host, counts in recap.items():
        assert counts["failed"] == 0 and counts["unreachable"] == 0, (host, counts)
    return recap


def test_first_run_converges_every_host(deployment: Deployment) -> None:
    recap = assert_clean_recap(deployment.first_run)
    assert all(counts["changed"] > 0 for counts in recap.values()), recap


def test_every_unit_is_active(deployment: Deployment) -> None:
    for name, units in UNITS.items():
        host = deployment.hosts[name]
        states = host.sh(f"systemctl is-active {' '.join(units)}", check=False).split()
        assert states == ["active"] * len(units), f"{name}: {dict(zip(units, states, strict=False))}"
        failed = host.sh("systemctl list-units --state=failed --no-legend --plain", check=False).strip()
        assert not failed, f"{name} has failed units:\n{failed}"


def test_producer_runs_once_to_completion(deployment: Deployment) -> None:
    vm1 = deployment.hosts["vm1"]

    def state() -> str:
        return vm1.sh("systemctl is-active iot-producer", check=False).strip()

    wait_for("the producer to have sent its images", lambda: state() != "activating", 300)
    assert state() == "active", vm1.sh("journalctl -u iot-producer --no-pager | tail -30", check=False)
    assert vm1.sh("systemctl is-enabled iot-producer", check=False).strip() != "enabled"


def test_broker_has_the_topics(deployment: Deployment) -> None:
    assert deployment.topics() >= TOPICS


def stored_documents(deployment: Deployment) -> list[dict[str, Any]]:
    response = requests.get(
        f"{deployment.couchdb_url}/img_db/_all_docs",
        params={"include_docs": "true", "attachments": "true"},
        auth=deployment.couchdb_auth,
        verify=str(deployment.ca_file),
        timeout=30,
    )
    response.raise_for_status()
    return [row["doc"] for row in response.json()["rows"]]


def complete(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in documents if "InferredValue" in d and "image.png" in d.get("_attachments", {})]


def test_the_producers_images_are_stored_with_predictions(deployment: Deployment) -> None:
    def enough() -> list[dict[str, Any]] | None:
        documents = complete(stored_documents(deployment))
        return documents if len(documents) >= deployment.images else None

    documents = wait_for(f"{deployment.images} complete documents in CouchDB on vm4", enough, 300)
    assert len(documents) == deployment.images
    for document in documents:
        assert document["GroundTruth"] and document["InferredValue"], document
        png = base64.b64decode(document["_attachments"]["image.png"]["data"])
        with Image.open(io.BytesIO(png)) as image:
            assert (image.format, image.size, image.mode) == ("PNG", (32, 32), "RGB")


def test_couchdb_lets_each_user_do_only_its_part(deployment: Deployment) -> None:
    """The sink wrote the documents above as iot_sink; here what the others may not do."""
    db = f"{deployment.couchdb_url}/img_db"

    def status(method: str, url: str, auth: tuple[str, str] | None, **kwargs: Any) -> int:
        return requests.request(
            method, url, auth=auth, verify=str(deployment.ca_file), timeout=30, **kwargs
        ).status_code

    sink = ("iot_sink", deployment.sink_password)
    assert status("GET", f"{db}/_all_docs", None) == 401  # anonymous
    assert status("PUT", f"{deployment.couchdb_url}/img_db_other", sink) in (401, 403)
    assert status("DELETE", db, sink) in (401, 403)
    assert status("GET", f"{deployment.couchdb_url}/_users/_all_docs", sink) in (401, 403)
    assert status("GET", f"{db}/_all_docs", deployment.couchdb_auth) == 200
    assert status("PUT", f"{db}/forged", deployment.couchdb_auth, json={"InferredValue": "truck"}) == 403
    # The sink's unit got its own user, not the server admin's password.
    vm4 = deployment.hosts["vm4"]
    assert deployment.couchdb_password not in vm4.sh("cat /etc/iot/sink/secrets/*")


def test_kafka_refuses_every_client_that_is_not_allowed(deployment: Deployment, tmp_path: Path) -> None:
    """Asked from vm1 (a pipeline VM: the firewall lets it reach Kafka), in the producer's image."""
    vm1, vm2 = deployment.hosts["vm1"], deployment.hosts["vm2"]
    other_ca = another_ca(tmp_path)
    image = vm1.sh(
        "docker image ls --format '{{.Repository}}:{{.Tag}}' | grep '/iot-producer:' | head -1"
    ).strip()
    passwords = deployment.kafka_passwords
    script = (Path(__file__).parent / "kafka_refusals.py").read_text()
    answer = vm1.sh(
        f"cat > /tmp/other-ca.pem <<'PEM'\n{other_ca.read_text()}PEM\n"
        "docker run --rm -i --network host --entrypoint python"
        " --volume /etc/iot/tls:/etc/iot/tls:ro --volume /tmp/other-ca.pem:/tmp/other-ca.pem:ro"
        f" {image} - {vm2.address}:9092 /tmp/other-ca.pem '{passwords['producer']}' '{passwords['inference']}'"
        f" <<'PY'\n{script}PY\n",
        timeout=600,
    )
    assert json.loads(answer.splitlines()[-1]) == {
        "plaintext": "_ALL_BROKERS_DOWN",
        "another CA": "_SSL",
        "wrong password": "_AUTHENTICATION",
        "producer logs in": "allowed",
        "producer reads iot-topic": "TOPIC_AUTHORIZATION_FAILED",
        "producer writes iot-predictions": "TOPIC_AUTHORIZATION_FAILED",
        "producer joins group sink": "GROUP_AUTHORIZATION_FAILED",
        "inference deletes iot-topic": "TOPIC_AUTHORIZATION_FAILED",
    }


def test_no_kafka_password_shows_in_docker_inspect_or_a_process_environment(deployment: Deployment) -> None:
    for name in ("vm3", "vm4"):
        host = deployment.hosts[name]
        seen = host.sh(
            "docker inspect $(docker ps --quiet); cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'",
            timeout=120,
        )
        # CouchDB's official image still takes its server admin from the environment (README).
        for user, password in deployment.kafka_passwords.items():
            assert password not in seen, f"{user}'s Kafka password shows on {name}"


def test_no_test_password_in_a_journal_or_an_image_layer(deployment: Deployment) -> None:
    """What the checks above do not read: each host's journal (Ansible's module invocations
    included) and the layers of the images the deployment builds or pulls of its own (iot-*), as
    `docker save` writes them. Third-party images come to the VM as they are in the registry."""
    patterns = " ".join(f"-e '{secret}'" for secret in deployment.secrets)
    for name, host in deployment.hosts.items():
        found = host.sh(f"journalctl --no-pager -o cat | grep -a -o -F {patterns} | sort -u", check=False)
        leaked = [n for n, secret in enumerate(deployment.secrets) if secret in found]
        assert not leaked, f"test passwords (numbers {leaked} of Deployment.secrets) in {name}'s journal"
        # A first line "images: <the IDs of this host's service images>", then what their layers hold.
        layers = host.sh(
            "command -v docker >/dev/null || exit 0;"
            " images=$(docker image ls --format '{{.Repository}} {{.ID}}'"
            " | awk '$1 ~ /iot-(producer|inference|sink)$/ {print $2}' | sort -u);"
            ' echo "images:" $images;'
            f' [ -z "$images" ] || docker save $images | grep -a -o -F {patterns} | sort -u',
            check=False,
            timeout=900,
        )
        if name in ("vm1", "vm3", "vm4"):  # producer, inference, sink
            assert layers.split("\n", 1)[0].strip() != "images:", f"no service image found on {name}"
        leaked = [n for n, secret in enumerate(deployment.secrets) if secret in layers]
        assert not leaked, f"test passwords (numbers {leaked} of Deployment.secrets) in an image on {name}"


@pytest.mark.parametrize(
    ("vm", "name"),
    [("vm3", "iot-inference"), ("vm4", "iot-sink"), ("vm4", "prometheus"), ("vm4", "alertmanager")],
)
def test_service_containers_are_hardened(deployment: Deployment, vm: str, name: str) -> None:
    config = json.loads(deployment.hosts[vm].sh(f"docker inspect --format '{{{{json .HostConfig}}}}' {name}"))
    assert config["CapDrop"] == ["ALL"] and config["ReadonlyRootfs"] is True
    assert "no-new-privileges" in config["SecurityOpt"]
    assert config["Memory"] > 0 and config["PidsLimit"] > 0


def test_prometheus_scrapes_inference_sink_couchdb_kafka_and_itself(deployment: Deployment) -> None:
    def up() -> dict[tuple[str, str], str]:
        response = requests.get(
            f"{deployment.prometheus_url}/api/v1/query",
            params={"query": "up"},
            auth=deployment.prometheus_auth,
            verify=str(deployment.ca_file),
            timeout=10,
        )
        return {
            (r["metric"]["job"], r["metric"].get("host", "")): r["value"][1]
            for r in response.json()["data"]["result"]
        }

    # Each target labelled with its VM; every VM's node exporter.
    expected = {
        ("inference", "vm3"),
        ("sink", "vm4"),
        ("couchdb", "vm4"),
        ("kafka", "vm2"),
        ("prometheus", ""),
    }
    expected |= {("node", vm) for vm in UNITS}
    wait_for("Prometheus on vm4: up == 1 for inference, sink, CouchDB, the broker, the VMs and itself",
             lambda: expected <= {target for target, value in up().items() if value == "1"}, 120)  # fmt: skip


def test_prometheus_answers_only_over_https_and_only_with_its_login(deployment: Deployment) -> None:
    url = f"{deployment.prometheus_url}/api/v1/query"
    ca = str(deployment.ca_file)

    def status(auth: tuple[str, str] | None) -> int:
        return requests.get(url, params={"query": "up"}, auth=auth, verify=ca, timeout=10).status_code

    assert status(None) == 401
    assert status(("prometheus", "not-" + deployment.prometheus_password)) == 401
    assert status(deployment.prometheus_auth) == 200
    # Plain HTTP on the same port gets no data, with or without the login.
    plain = requests.get(url.replace("https://", "http://"), auth=deployment.prometheus_auth, timeout=10)
    assert plain.status_code == 400 and "HTTPS" in plain.text, plain.text


def test_prometheus_password_is_in_no_container_setting_and_only_hashed_in_its_web_config(
    deployment: Deployment,
) -> None:
    vm4 = deployment.hosts["vm4"]
    assert deployment.prometheus_password not in vm4.sh("docker inspect prometheus", timeout=120)
    web = vm4.sh("cat /etc/iot/prometheus/secrets/web.yml")
    assert deployment.prometheus_password not in web and "$2b$12$" in web


def connects(source: Host, address: str, port: int) -> bool:
    """Whether SOURCE opens a TCP connection to ADDRESS:PORT within 3 s (refused or dropped: no)."""
    script = f"timeout 3 bash -c '</dev/tcp/{address}/{port}' 2>/dev/null && echo open || echo closed"
    return source.sh(script, timeout=30).strip() == "open"


def test_firewall_allows_only_what_the_pipeline_needs(deployment: Deployment) -> None:
    vm1, vm2, vm4 = (deployment.hosts[n] for n in ("vm1", "vm2", "vm4"))
    assert connects(vm1, vm2.address, 9092), "Kafka must answer the pipeline's VMs"
    assert not connects(vm1, vm2.address, 2181), "ZooKeeper must not be reachable from other VMs"
    assert not connects(vm1, vm2.address, 9404), "the broker's metrics are Prometheus's and the admins' only"
    assert not connects(vm1, vm4.address, 6984), "CouchDB must only be reachable from the sink and admins"
    assert not connects(vm1, vm4.address, 5984), "CouchDB's plain port must not be reachable from other VMs"
    assert not connects(vm1, vm4.address, 17986), "CouchDB's metrics must only be reachable from monitoring"
    assert not connects(vm1, vm2.address, 22), "SSH is the controller's (the admins') only"
    assert not connects(vm1, vm2.address, 9101), "a VM's node exporter is Prometheus's and the admins' only"
    assert not connects(vm1, vm4.address, 9093), "Alertmanager is the admins' only"


def test_no_secret_in_ansibles_output(deployment: Deployment) -> None:
    for secret in deployment.secrets:
        for run in (deployment.first_run, deployment.second_run):
            assert secret not in run.output


def test_second_run_changes_nothing(deployment: Deployment) -> None:
    recap = assert_clean_recap(deployment.second_run)
    assert all(counts["changed"] == 0 for counts in recap.values()), deployment.second_run.changed_tasks()


def active_since(host: Host, unit: str) -> str:
    return host.sh(f"systemctl show {unit} --property=ActiveEnterTimestampMonotonic").strip()


def test_a_hung_service_is_restarted_by_its_watchdog(deployment: Deployment) -> None:
    """A paused container is alive to systemd and Docker but answers nothing; its watchdog
    restarts it after failed health checks in a row."""
    vm3 = deployment.hosts["vm3"]
    started = active_since(vm3, "iot-inference")
    vm3.sh("docker pause iot-inference")
    try:
        wait_for(
            "the watchdog to restart the paused inference",
            lambda: active_since(vm3, "iot-inference") != started,
            240,
        )
    finally:
        vm3.sh("docker unpause iot-inference", check=False)
    wait_for("inference ready again on vm3", lambda: deployment.ready("vm3", 8002), 300)
    log = vm3.sh("journalctl -u iot-inference-watchdog --no-pager")
    assert "3 of 3 in a row" in log and "restarting it" in log, log[-3000:]


FILLED = "/mnt/iot-filled"  # a small file system on vm2, filled past the disk alert's threshold


def firing(deployment: Deployment, name: str, **labels: str) -> list[dict[str, Any]]:
    """The firing alerts NAME with LABELS the webhook has received."""
    return [
        alert
        for alert in deployment.alerts.alerts("firing")
        if alert["labels"].get("alertname") == name
        and all(alert["labels"].get(key) == value for key, value in labels.items())
    ]


def test_a_stopped_sink_and_a_full_disk_reach_a_person_through_alertmanager(
    deployment: Deployment,
) -> None:
    """Prometheus fires, Alertmanager routes, the webhook (this test's, on the gateway) is told:
    each alert with its name, its labels and its runbook."""
    vm2, vm4 = deployment.hosts["vm2"], deployment.hosts["vm4"]
    image = "/var/tmp/iot-filled.img"  # noqa: S108 (on vm2)
    vm2.sh(
        f"truncate --size 64M {image} && mkfs.ext4 -q -F {image} && mkdir -p {FILLED}"
        f" && mount -o loop {image} {FILLED}"
        f" && fallocate --length $(( $(df --output=avail -B1 {FILLED} | tail -1) * 95 / 100 )) {FILLED}/fill"
    )
    vm4.sh("systemctl stop iot-sink")
    try:
        sink_down = wait_for(
            "IoTTargetDown for vm4's sink at the webhook",
            lambda: firing(deployment, "IoTTargetDown", job="sink", host="vm4"),
            300,
        )
        disk_full = wait_for(
            f"IoTHostDiskFull for vm2's {FILLED} at the webhook",
            lambda: firing(deployment, "IoTHostDiskFull", host="vm2", mountpoint=FILLED),
            300,
        )
    finally:
        vm4.sh("systemctl start iot-sink")
        vm2.sh(f"umount {FILLED}; rmdir {FILLED}; rm -f {image}", check=False)
    for alert, severity in ((sink_down[0], "critical"), (disk_full[0], "warning")):
        assert alert["labels"]["severity"] == severity, alert
        assert alert["annotations"]["summary"], alert
        runbook = alert["annotations"]["runbook"]
        assert runbook == f"docs/operating.md#{alert['labels']['alertname'].lower()}", alert
    wait_for("the sink ready again on vm4", lambda: deployment.ready("vm4", 8003), 300)


@pytest.mark.parametrize("how", ["systemctl restart", "reboot"])
def test_inference_comes_back(deployment: Deployment, how: str) -> None:
    vm3 = deployment.hosts["vm3"]
    if how == "reboot":
        restart_host(vm3)
    else:
        vm3.sh("systemctl restart iot-inference")
    wait_for(f"inference ready on vm3 after {how}", lambda: deployment.ready("vm3", 8002), 300)


def test_rebooted_producer_does_not_send_again(deployment: Deployment) -> None:
    sent = deployment.images_topic_size()
    restart_host(deployment.hosts["vm1"])
    wait_for("sink ready", lambda: deployment.ready("vm4", 8003), 120)
    state = deployment.hosts["vm1"].sh("systemctl is-active iot-producer", check=False).strip()
    assert state != "activating"
    assert deployment.images_topic_size() == sent
    assert len(complete(stored_documents(deployment))) == deployment.images


def test_pipeline_still_works_after_the_restarts(deployment: Deployment) -> None:
    """Started by hand, the producer sends its images again and they all come through."""
    deployment.hosts["vm1"].sh("systemctl start iot-producer", timeout=600)
    wait_for(
        "the second round of images in CouchDB",
        lambda: len(complete(stored_documents(deployment))) >= 2 * deployment.images,
        300,
    )
