"""Systemd hosts that stand in for VM1-VM4, and vm5-vm7 for a CouchDB cluster: podman containers
on a private bridge network.

Each host boots Debian's systemd (`--systemd=always --privileged --cgroupns=private`), has its own
address and hostname, runs sshd with a key the test pushes in, and keeps /var/lib/docker on a
volume (overlay2 cannot sit on the container's own overlay), so Docker runs inside it as on a VM.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testbed.waiting import wait_for
from tests.e2e.commands import run
from tests.e2e.podman import image_exists, podman
from tests.e2e.rootfs import debian_rootfs

HOST_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "python3-apt", "openssh-server", "sudo",
    "ca-certificates", "iproute2", "procps",
)  # fmt: skip
PREFIX = "iot-e2e"
NETWORK = f"{PREFIX}-net"
SUBNET = "10.231.47.0/24"
GATEWAY = "10.231.47.1"  # the test machine as the hosts see it (the Ansible controller)
# One testbed per machine: a second session would remove the first one's hosts as leftovers
# (both use the same names and subnet), so it waits for the first to finish.
LOCK = Path("/run/iot-e2e-hosts.lock")
LOCK_WAIT_S = 1800
NETAVARK_IPAM = Path("/run/containers/networks/ipam.db")
SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
)  # fmt: skip


@dataclass(frozen=True)
class Host:
    name: str  # vm1..vm7, also the hostname
    address: str
    ssh_key: Path

    @property
    def container(self) -> str:
        return f"{PREFIX}-{self.name}"

    def sh(self, script: str, *, check: bool = True, timeout: float = 300) -> str:
        """Run a shell script on the host as root over SSH, as an operator would; its stdout.

        Not `podman exec`: on hosts with hybrid cgroups a rebooting systemd host can take the
        other hosts' cgroups with it, after which podman can no longer exec into them (they run on).
        """
        command = ["ssh", "-i", str(self.ssh_key), *SSH_OPTIONS, f"root@{self.address}", script]
        return run(command, check=check, timeout=timeout).stdout


def host_image() -> str:
    """The hosts' image: Debian bookworm with systemd and sshd, imported into podman once."""
    tarball = debian_rootfs("host", HOST_PACKAGES, keep_apt_lists=True)
    name = f"localhost/{PREFIX}-host:{tarball.stem.rsplit('-', 1)[1]}"
    if not image_exists(name):
        podman(
            "import", "--change", 'CMD ["/sbin/init"]', "--change", "STOPSIGNAL SIGRTMIN+3",
            "--change", "ENV container=podman", str(tarball), name,
        )  # fmt: skip
    # Earlier recipes' images are of no further use.
    for image in podman("images", "--format", "{{.Repository}}:{{.Tag}}", name.split(":")[0]).stdout.split():
        if image != name:
            podman("rmi", image, check=False)
    return name


def port_open(address: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_host(host: Host, image: str) -> None:
    podman(
        "run", "--detach", "--name", host.container, "--hostname", host.name,
        "--network", NETWORK, "--ip", host.address,
        "--systemd=always", "--privileged", "--cgroupns=private",
        "--volume", f"{host.container}-docker:/var/lib/docker",
        image,
    )  # fmt: skip


def wait_booted(host: Host, timeout: float = 120) -> None:
    """Until systemd reports the boot finished, asked over SSH (the key is in place)."""

    def booted() -> bool:
        if not port_open(host.address, 22):
            return False
        return host.sh("systemctl is-system-running", check=False, timeout=30).strip() in (
            "running",
            "degraded",
        )

    wait_for(f"{host.name} booted", booted, timeout)


def restart_host(*hosts: Host) -> None:
    """The reboot of VMs, all at once: systemd shuts down (SIGRTMIN+3) and boots again; disks
    are kept."""
    podman("restart", "--time", "60", *(host.container for host in hosts), timeout=180)
    for host in hosts:
        wait_booted(host)


def authorize_key(host: Host, public_key: str) -> None:
    """Push the test's key in through the engine, before anything else runs on the host."""
    script = (
        f"install -d -m 700 /root/.ssh && echo '{public_key}' > /root/.ssh/authorized_keys"
        " && chmod 600 /root/.ssh/authorized_keys"
    )
    podman("exec", host.container, "bash", "-c", script)


def remove_all() -> None:
    """Remove every host, volume and the network this module makes (also leftovers of a crash)."""
    names = podman("ps", "--all", "--format", "{{.Names}}", check=False).stdout.split()
    for name in names:
        if name.startswith(f"{PREFIX}-vm"):
            podman("rm", "--force", "--time", "10", name, check=False, timeout=120)
    for volume in podman("volume", "ls", "--format", "{{.Name}}", check=False).stdout.split():
        if volume.startswith(f"{PREFIX}-vm"):
            podman("volume", "rm", "--force", volume, check=False)
    podman("network", "rm", "--force", NETWORK, check=False)
    remove_stale_interfaces()
    if not podman("ps", "--all", "--quiet", check=False).stdout.strip():
        remove_netavark_chains()
        # Its address allocations too, which a killed session leaves held (netavark keeps them
        # per network name, so the next session's hosts could not have their addresses).
        NETAVARK_IPAM.unlink(missing_ok=True)


def remove_stale_interfaces() -> None:
    """A session killed before its teardown leaves netavark's network namespaces (each with a
    host's address) and the bridge (with the gateway's) behind, and the subnet stays taken."""
    prefix = GATEWAY.rsplit(".", 1)[0] + "."
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        namespace = line.split()[0]
        if f" {prefix}" in run(["ip", "-n", namespace, "-br", "-4", "addr"], check=False).stdout:
            run(["ip", "netns", "delete", namespace], check=False)
    for line in run(["ip", "-br", "-4", "addr"], check=False).stdout.splitlines():
        if f" {GATEWAY}/" in f" {line}":
            run(["ip", "link", "delete", line.split()[0].split("@")[0]], check=False)


def remove_netavark_chains() -> None:
    """netavark leaves its base iptables chains behind when the last network goes; with no
    container of podman's running, nothing uses them."""
    for table in ("filter", "nat"):
        rules = run(["iptables", "-t", table, "-S"], check=False).stdout.splitlines()
        for rule in rules:
            if rule.startswith("-A ") and "NETAVARK" in rule and not rule.split()[1].startswith("NETAVARK"):
                run(["iptables", "-t", table, "-D", *shlex.split(rule)[1:]], check=False)
        chains = [r.split()[1] for r in rules if r.startswith("-N NETAVARK")]
        for chain in chains:
            run(["iptables", "-t", table, "-F", chain], check=False)
        for chain in chains:
            run(["iptables", "-t", table, "-X", chain], check=False)


@contextmanager
def hosts(key_dir: Path) -> Iterator[dict[str, Host]]:
    """Boot vm1..vm7 on a fresh network, root SSH with a new key in KEY_DIR; remove all after.
    vm1-vm4 are the four VMs of the seed's layout, vm5-vm7 the nodes of a CouchDB cluster."""
    with testbed_lock():
        yield from _hosts(key_dir)


@contextmanager
def testbed_lock() -> Iterator[None]:
    """Hold the machine's testbed; wait (LOCK_WAIT_S at most) while another session holds it."""
    with LOCK.open("a+") as handle:

        def acquired() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        if not acquired():
            handle.seek(0)
            print(f"waiting for the e2e session that holds {LOCK} (pid {handle.read().strip()}) to end")
            wait_for(f"the e2e session holding {LOCK} to end", acquired, LOCK_WAIT_S)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _hosts(key_dir: Path) -> Iterator[dict[str, Host]]:
    image = host_image()
    remove_all()  # under the lock, whatever is left is a killed session's
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "iot-e2e", "-f", str(key_dir / "id_ed25519")])
    public_key = (key_dir / "id_ed25519.pub").read_text().strip()
    key = key_dir / "id_ed25519"
    found = {f"vm{i}": Host(f"vm{i}", f"10.231.47.{10 + i}", key) for i in range(1, 8)}
    try:
        podman("network", "create", "--subnet", SUBNET, "--gateway", GATEWAY, NETWORK)
        for host in found.values():
            start_host(host, image)
        for host in found.values():
            authorize_key(host, public_key)
            wait_booted(host)
        yield found
    finally:
        remove_all()
