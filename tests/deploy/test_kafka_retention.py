"""Kafka's size retention (roles/kafka, `kafka_log_retention_bytes`), rendered without any VM.

`auto` sizes `log.retention.bytes` from the disk that holds Kafka's data: `kafka_log_disk_share`
of the filesystem, split among the partition replicas a broker may hold, less one segment, which
is a fifth of that part (at most 1 GiB), so a partition's retention plus the segment being written
fit in its part. In render-only mode the filesystem's size is `kafka_render_disk_bytes`. A number
is written as it is (with a segment a quarter of it, at most 1 GiB), `-1` means no size limit, and anything else
stops the role before it touches a host.

Each render runs site.yml on the broker VMs only, and only the `kafka` tag (`--limit broker
--tags kafka`), as the smallest run that writes `server.properties`.
"""

from __future__ import annotations

import math
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_ansible import (
    ANSIBLE,
    INVENTORY,
    Render,
    output,
    read_properties,
    render_site,
)

ROLE = ANSIBLE / "roles" / "kafka"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
SETTINGS = yaml.safe_load((ANSIBLE / "group_vars" / "all" / "main.yml").read_text())
SERVER_PROPERTIES = "/etc/kafka/server.properties"
GIB = 1 << 30
SEGMENT_MIN = 16 << 20
KRAFT_INVENTORY = ANSIBLE / "inventory.kraft-cluster.example.ini"


def vault() -> dict[str, str]:
    """Every secret site.yml checks, none a placeholder."""
    names = ["couchdb_admin", "couchdb_sink", "couchdb_reader", "grafana_admin", "prometheus"]
    names += [f"kafka_{user}" for user in ("admin", "producer", "inference", "sink", "audit")]
    return {f"vault_{name}_password": f"{name}-{secrets.token_hex(8)}" for name in names}


def render_brokers(
    home: Path, out: Path, extra: dict[str, Any], inventory: Path = INVENTORY
) -> subprocess.CompletedProcess[str]:
    return render_site(
        home, out, {**vault(), **extra}, "--limit", "broker", "--tags", "kafka", inventory=inventory
    )


def rendered_hosts(render: Render) -> list[str]:
    return sorted(path.name for path in render.root.iterdir())


def replicas_per_broker(broker_count: int) -> int:
    """The partition replicas of the project's topics one broker may hold: every partition times
    its copies (min(3, brokers)), spread over the brokers, rounded up."""
    partitions: int = sum(SETTINGS[f"iot_{t}_partitions"] for t in ("images", "predictions", "dlq"))
    return math.ceil(partitions * min(3, broker_count) / broker_count)


def auto_retention(disk_bytes: int, broker_count: int) -> tuple[int, int]:
    """(log.retention.bytes, log.segment.bytes) that `auto` must give."""
    part = int(disk_bytes * DEFAULTS["kafka_log_disk_share"] / replicas_per_broker(broker_count))
    segment = min(GIB, max(SEGMENT_MIN, part // 5))
    return part - segment, segment


@pytest.fixture(scope="module")
def auto_render(ansible_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Render:
    """The example inventory with the role's defaults: retention `auto`, from kafka_render_disk_bytes."""
    out = tmp_path_factory.mktemp("retention-auto")
    result = render_brokers(ansible_home, out, {})
    assert result.returncode == 0, output(result)
    return Render(out, result.stdout + result.stderr)


def test_auto_retention_is_the_disk_share_over_the_replicas_a_broker_holds(
    auto_render: Render,
) -> None:
    (host,) = rendered_hosts(auto_render)
    props = read_properties(auto_render.file(host, SERVER_PROPERTIES))
    disk = DEFAULTS["kafka_render_disk_bytes"]
    assert DEFAULTS["kafka_log_retention_bytes"] == "auto" and DEFAULTS["kafka_log_disk_share"] == 0.7
    retention, segment = auto_retention(disk, 1)
    assert (int(props["log.retention.bytes"]), int(props["log.segment.bytes"])) == (retention, segment)
    # The example: 3 + 3 + 1 partitions, one copy each on its one broker, a 20 GiB disk.
    assert replicas_per_broker(1) == 7 and disk == 20 * GIB
    assert (retention, segment) == (1717986919, 429496729)
    # Retention and the segment being written fit in the replica's part of 0.7 of the disk...
    assert 7 * (retention + segment) <= 0.7 * disk
    # ...and a partition deletes in steps of a quarter of its retention at most.
    assert 4 * segment <= retention
    assert props["log.retention.hours"] == "168", "time retention stays as well"


def test_auto_retention_says_where_its_number_comes_from(auto_render: Render) -> None:
    (host,) = rendered_hosts(auto_render)
    text = auto_render.file(host, SERVER_PROPERTIES).read_text()
    assert "0.7 of the 21474836480-byte filesystem of /var/lib/kafka/data" in text
    assert "over the 7 partition replicas this broker may hold" in text


def cluster_inventory(path: Path, host_vars: dict[str, str]) -> Path:
    """The KRaft cluster example with host variables on its brokers (vm5-vm7, and vm8 added when
    named): one render then tries several settings at once."""
    text = KRAFT_INVENTORY.read_text()
    if "vm8" in host_vars:
        text = text.replace(
            "[inference]", "vm8 ansible_host=203.0.113.18 iot_address=10.0.0.18\n\n[inference]", 1
        )
    lines = [
        f"{line} {host_vars[line.split()[0]]}" if line.split()[:1] and line.split()[0] in host_vars else line
        for line in text.splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_explicit_bytes_and_no_limit_are_written_as_they_are_in_kraft_mode_too(
    ansible_home: Path, tmp_path: Path
) -> None:
    """Both modes share server.properties.j2. A KRaft cluster of three: vm5 with a number, vm6 with
    -1, vm7 with auto on a 100 GiB disk, where every broker holds every copy (7 x 3 / 3 replicas)."""
    explicit = 5 * GIB + 3
    inventory = cluster_inventory(
        tmp_path / "inventory.ini",
        {
            "vm5": f"kafka_log_retention_bytes={explicit}",
            "vm6": "kafka_log_retention_bytes=-1",
            "vm7": f"kafka_render_disk_bytes={100 * GIB}",
        },
    )
    out = tmp_path / "out"
    result = render_brokers(ansible_home, out, {"iot_kafka_mode": "kraft"}, inventory)
    assert result.returncode == 0, output(result)
    render = Render(out, "")
    assert rendered_hosts(render) == ["vm5", "vm6", "vm7"]
    props = {host: read_properties(render.file(host, SERVER_PROPERTIES)) for host in ("vm5", "vm6", "vm7")}
    assert all(p["process.roles"] == "broker,controller" for p in props.values())
    written = {
        host: (int(p["log.retention.bytes"]), int(p["log.segment.bytes"])) for host, p in props.items()
    }
    # A quarter of 5 GiB is over Kafka's default segment, which stays; so it does without a limit.
    assert written["vm5"] == (explicit, GIB)
    assert written["vm6"] == (-1, GIB)
    # 0.7 of 100 GiB over 7 replicas: 10 GiB each, less a 1 GiB segment (a fifth is more).
    assert replicas_per_broker(3) == 7
    assert written["vm7"] == auto_retention(100 * GIB, 3) == (9 * GIB, GIB)
    assert "filesystem of" not in render.file("vm5", SERVER_PROPERTIES).read_text()


def test_a_bad_retention_or_a_disk_too_small_for_the_replicas_is_refused(
    ansible_home: Path, tmp_path: Path
) -> None:
    """One broker per bad setting, and vm8 makes four: 7 partitions x 3 copies over 4 brokers are
    ceil(21 / 4) = 6 replicas each, and 0.7 of vm8's 500 MiB over 6 is under the 80 MiB (four
    16 MiB segments and the one being written) each needs."""
    small_disk = 500 << 20
    inventory = cluster_inventory(
        tmp_path / "inventory.ini",
        {
            "vm5": "kafka_log_retention_bytes=10GB",
            "vm6": "kafka_log_retention_bytes=0",
            "vm7": "kafka_log_disk_share=1.5",
            "vm8": f"kafka_render_disk_bytes={small_disk}",
        },
    )
    assert replicas_per_broker(4) == 6
    out = tmp_path / "out"
    result = render_brokers(ansible_home, out, {}, inventory)
    assert result.returncode != 0, output(result)
    failed = {
        host: " ".join(message.split())
        for host, message in re.findall(r"^fatal: \[(vm\d)\]: FAILED! => (.*)$", result.stdout, re.M)
    }
    assert set(failed) == {"vm5", "vm6", "vm7", "vm8"}, output(result)
    refusal = "kafka_log_retention_bytes is auto (sized from the disk), -1 (no size limit)"
    for host, value in (("vm5", "10GB"), ("vm6", "0"), ("vm7", "1.5")):
        assert refusal in failed[host] and f"(it is {value})" in failed[host], failed[host]
    part = int(small_disk * 0.7 / 6)
    assert f"over 6 partition replicas leaves {part} bytes each, under the {5 * SEGMENT_MIN}" in failed["vm8"]
    assert "set kafka_log_retention_bytes to a number of bytes or -1" in failed["vm8"]
    assert not out.exists() or not any(out.rglob("*.properties")), "nothing may be rendered after a refusal"


def test_a_changed_retention_restarts_the_brokers_in_turn() -> None:
    """What render-only mode cannot show, from the role itself: the size is read once the data
    folder exists and before server.properties is written, and a changed server.properties is
    what the rolling-restart play restarts a running broker for."""
    deploy = yaml.safe_load((ROLE / "tasks" / "deploy.yml").read_text())
    names = [task["name"] for task in deploy]
    folders = names.index("Create the folders Kafka and ZooKeeper write to.")
    sizing = names.index("Size the retention from the disk that holds Kafka's data.")
    install = names.index("Install the Kafka configuration, logging and systemd unit.")
    assert folders < sizing < install
    assert deploy[sizing]["ansible.builtin.include_tasks"] == "retention.yml"
    assert deploy[install]["register"] == "kafka_broker_config"
    broker_files = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["kafka_broker_files"]
    assert "server.properties.j2" in [f["src"] for f in broker_files]
    (remember,) = [t for t in deploy if "kafka_broker_restart" in t.get("ansible.builtin.set_fact", {})]
    assert "kafka_broker_config is changed" in remember["ansible.builtin.set_fact"]["kafka_broker_restart"]
    retention = yaml.safe_load((ROLE / "tasks" / "retention.yml").read_text())
    (df,) = [t for t in retention if "ansible.builtin.command" in t]
    assert df["ansible.builtin.command"]["argv"] == ["df", "--output=size", "-B1", "{{ kafka_data_dir }}"]
    assert df["changed_when"] is False and df["check_mode"] is False
