"""A private Docker daemon for the deployment tests: `with private_dockerd() as engine: ...`.

Debian's docker.io (dockerd 20.10, the classic builder, docker-compose v1) is started on its own
socket, state and network, so it neither needs nor disturbs a system Docker (none runs in CI;
PID 1 need not be systemd): `dockerd` supervises its own containerd under the exec root.

- Socket `/run/iot-e2e/docker.sock`; runtime state under `/run/iot-e2e/`.
- Data root `/var/lib/iot-e2e/docker` (or `$IOT_E2E_DOCKER_ROOT`), KEPT between runs on purpose:
  it holds the images built there and the classic builder's cache, so the next run rebuilds only
  what changed. Delete the folder (with no daemon running) to start from nothing.
- The default bridge `docker0` on `10.231.46.1/24` and networks that Compose creates from
  `10.231.64.0/18` (/24 each): private ranges unlikely to clash with a host's or podman's. The MTU
  is the host's (a VM's 1400 would otherwise stall downloads inside builds).
- Storage driver overlay2, else fuse-overlayfs where overlay2 cannot run (a data root on an
  overlay file system); never vfs, which copies each layer whole (gigabytes with torch).
- The host's /etc/docker/daemon.json is ignored (an empty config is passed instead).

On exit, even after a failure: dockerd is stopped (containers with it), and the iptables rules
and chains and the bridges it made are removed (the bridges only where iproute2's `ip` is
installed; otherwise they stay, without containers), restoring the FORWARD policy. `ip_forward`
is left on (other engines' networks may need it).

Needs root, and no other dockerd running: a system one would share `docker0` and the DOCKER
chains, which the cleanup removes, so the context manager refuses to start beside it. A daemon
left by a killed earlier run is stopped first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from testbed.waiting import wait_for
from tests.e2e.commands import run

RUN_DIR: Final = Path("/run/iot-e2e")
# IOT_E2E_DOCKER_ROOT moves it (`make ci-fresh` points it into its temporary folder).
DATA_ROOT: Final = Path(os.environ.get("IOT_E2E_DOCKER_ROOT", "/var/lib/iot-e2e/docker"))
SOCKET: Final = RUN_DIR / "docker.sock"
BRIDGE: Final = "docker0"
BRIDGE_IP: Final = "10.231.46.1/24"
ADDRESS_POOL: Final = "base=10.231.64.0/18,size=24"
STORAGE_DRIVERS: Final = ("overlay2", "fuse-overlayfs")
START_TIMEOUT_S: Final = 90.0
STOP_TIMEOUT_S: Final = 60.0
IPTABLES_TABLES: Final = ("filter", "nat")
# The bridges dockerd makes: the default one, and one per network (Compose's).
DOCKER_BRIDGE: Final = re.compile(rf"{BRIDGE}|br-[0-9a-f]{{12}}")
# What dockerd adds to iptables: its chains, jumps to them, and rules naming its bridges.
DOCKER_RULE: Final = re.compile(rf"\bDOCKER[-A-Z0-9]*\b|\b({DOCKER_BRIDGE.pattern})\b")


class EngineError(RuntimeError):
    """The private Docker daemon could not be started."""


@dataclass(frozen=True)
class Dockerd:
    """A running private dockerd: its environment and a `docker` runner."""

    cli: str
    socket: Path
    storage_driver: str
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def command(self) -> tuple[str, ...]:
        """argv prefix for tools that take an engine command (run with `environ()`)."""
        return (self.cli,)

    def environ(self) -> dict[str, str]:
        """os.environ plus `env`: for docker, docker-compose and anything that talks to Docker."""
        return {**os.environ, **self.env}

    def docker(
        self, *args: str, check: bool = True, timeout: float = 600, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker args...` against this daemon (commands.run: on failure, with `check`, it
        raises CommandError with what docker printed)."""
        return run([self.cli, *args], env=self.environ(), check=check, timeout=timeout, input=input)


def docker_cli() -> str:
    """Debian's docker CLI, which matches its dockerd (a newer CLI elsewhere on PATH may insist
    on buildx for builds); any `docker` on PATH otherwise."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EngineError("no docker CLI found (Debian: apt-get install docker.io)")


@contextlib.contextmanager
def private_dockerd(
    insecure_registries: Sequence[str] = (),
    *,
    data_root: Path = DATA_ROOT,
    start_timeout: float = START_TIMEOUT_S,
) -> Iterator[Dockerd]:
    """Start dockerd, wait until `docker info` answers, yield it; stop it and clean up on exit.

    `insecure_registries` (`host:port`) are registries reached over plain HTTP, e.g. a local one
    that holds stand-in images. One such daemon at a time per machine (a lock file says so).
    """
    if os.geteuid() != 0:
        raise EngineError("a private dockerd needs root")
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineError("dockerd is not installed (Debian: apt-get install docker.io)")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    data_root.mkdir(parents=True, exist_ok=True)
    with _lock(RUN_DIR / "lock"):
        _refuse_foreign_dockerd()
        _stop_stale(RUN_DIR / "docker.pid")
        before = _iptables_snapshot()
        process: subprocess.Popen[bytes] | None = None
        try:
            process, engine = _start(dockerd, data_root, insecure_registries, start_timeout)
            yield engine
        finally:
            if process is not None:
                _stop(process)
            _cleanup_network(before)


def _start(
    dockerd: str, data_root: Path, insecure_registries: Sequence[str], start_timeout: float
) -> tuple[subprocess.Popen[bytes], Dockerd]:
    config = RUN_DIR / "daemon.json"
    config.write_text(json.dumps({}))
    common = [
        dockerd,
        f"--host=unix://{SOCKET}",
        f"--data-root={data_root}",
        f"--exec-root={RUN_DIR / 'exec'}",
        f"--pidfile={RUN_DIR / 'docker.pid'}",
        f"--config-file={config}",
        f"--bip={BRIDGE_IP}",
        f"--default-address-pool={ADDRESS_POOL}",
        f"--mtu={_host_mtu()}",
        *(f"--insecure-registry={r}" for r in insecure_registries),
    ]
    failures: list[str] = []
    for driver in _storage_drivers():
        try:
            return _start_with(driver, [*common, f"--storage-driver={driver}"], start_timeout)
        except EngineError as error:
            failures.append(f"{driver}: {error}")
    raise EngineError("dockerd did not start:\n" + "\n".join(failures))


def _start_with(
    driver: str, args: list[str], start_timeout: float
) -> tuple[subprocess.Popen[bytes], Dockerd]:
    log = RUN_DIR / "dockerd.log"
    env = {"DOCKER_HOST": f"unix://{SOCKET}", "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}
    engine = Dockerd(cli=docker_cli(), socket=SOCKET, storage_driver=driver, log=log, env=env)
    with log.open("ab") as out:
        # Its own session: a Ctrl-C meant for the tests does not kill it before the cleanup.
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(
            f"dockerd ({driver}) to answer on {SOCKET}",
            lambda: _answers(engine),
            start_timeout,
            alive=lambda: _alive(process, log),
        )
    except (AssertionError, EngineError) as error:
        _stop(process)
        raise EngineError(str(error)) from error
    return process, engine


def _answers(engine: Dockerd) -> bool:
    try:
        return engine.docker("info", check=False, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _storage_drivers() -> list[str]:
    forced = os.environ.get("IOT_E2E_STORAGE_DRIVER")
    if forced:
        return [forced]
    return [d for d in STORAGE_DRIVERS if d != "fuse-overlayfs" or shutil.which("fuse-overlayfs")]


def _alive(process: subprocess.Popen[bytes], log: Path) -> None:
    if process.poll() is not None:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise EngineError(f"dockerd exited with {process.returncode}:\n" + "\n".join(tail))


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (dockerd stops its containers and its containerd), SIGKILL after a deadline."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    # A killed dockerd leaves its containerd behind; the next start must not find it running.
    _kill_pidfile(RUN_DIR / "exec" / "containerd" / "containerd.pid")


def _stop_stale(pidfile: Path) -> None:
    """A daemon of ours left by a run that was killed (the lock is free, so nobody uses it)."""
    pid = _read_pid(pidfile)
    if pid is not None and _pid_is(pid, "dockerd"):
        os.kill(pid, signal.SIGTERM)
        wait_for("a stale private dockerd to exit", lambda: not _pid_is(pid, "dockerd"), STOP_TIMEOUT_S)
    _kill_pidfile(RUN_DIR / "exec" / "containerd" / "containerd.pid")


def _kill_pidfile(pidfile: Path) -> None:
    pid = _read_pid(pidfile)
    if pid is not None and _pid_is(pid, "containerd"):
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(AssertionError):
            wait_for("containerd to exit", lambda: not _pid_is(pid, "containerd"), 30)
        if _pid_is(pid, "containerd"):
            os.kill(pid, signal.SIGKILL)


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_is(pid: int, name: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:
        return False


def _refuse_foreign_dockerd() -> None:
    """Another dockerd (a system one) would share docker0 and the DOCKER chains with ours."""
    ours = f"--host=unix://{SOCKET}".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _pid_is(int(proc.name), "dockerd"):
            with contextlib.suppress(OSError):
                if ours not in (proc / "cmdline").read_bytes().split(b"\0"):
                    raise EngineError(
                        f"another dockerd runs (pid {proc.name}); stop it first: the private one "
                        "would share its bridge and iptables chains"
                    )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EngineError(f"a private dockerd is already in use ({path} is locked)") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _host_mtu() -> int:
    """The MTU of the interface that carries the default route (1500 if none is found)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 1 and fields[1] == "00000000":
                return int(Path(f"/sys/class/net/{fields[0]}/mtu").read_text())
    return 1500


# --- network cleanup -------------------------------------------------------------------------


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=30, check=False)


def _iptables_snapshot() -> dict[str, list[str]]:
    """`iptables -S` of each table dockerd writes to."""
    return {table: _iptables("-t", table, "-S").stdout.splitlines() for table in IPTABLES_TABLES}


def _cleanup_network(before: Mapping[str, list[str]]) -> None:
    """Remove Docker's iptables rules and chains and its bridges; restore the policies of `before`.

    Everything Docker-named is ours: `_refuse_foreign_dockerd` made sure no other dockerd runs, so
    what a killed earlier run left behind goes too. Other rules (podman's) are not touched.
    """
    for table in IPTABLES_TABLES:
        now = _iptables("-t", table, "-S").stdout.splitlines()
        chains = [r.split()[1] for r in now if r.startswith("-N ") and DOCKER_RULE.fullmatch(r.split()[1])]
        # Jumps into the chains first, then the chains (flushed, then deleted).
        for rule in now:
            if rule.startswith("-A ") and rule.split()[1] not in chains and DOCKER_RULE.search(rule):
                _iptables("-t", table, "-D", *_split_rule(rule[3:]))
        for chain in chains:
            _iptables("-t", table, "-F", chain)
        for chain in chains:
            _iptables("-t", table, "-X", chain)
        for policy in before.get(table, []):
            if policy.startswith("-P ") and policy not in now:
                _iptables("-t", table, *policy.split())
    ip = shutil.which("ip")
    for bridge in sorted(_bridges()):
        if ip and DOCKER_BRIDGE.fullmatch(bridge):
            subprocess.run([ip, "link", "delete", bridge], capture_output=True, timeout=30, check=False)


def _split_rule(rule: str) -> list[str]:
    """`iptables -S` output back into arguments (it quotes comments with double quotes)."""
    return [part.strip('"') for part in re.findall(r'"[^"]*"|\S+', rule)]


def _bridges() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir() if (p / "bridge").is_dir()}
