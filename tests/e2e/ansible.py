"""Running the project's own site.yml against the test hosts, as a user would."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.paths import REPO
from tests.e2e.commands import run
from tests.e2e.hosts import Host

ANSIBLE = REPO / "deploy" / "ansible"
PLAYBOOK_BIN = REPO / ".venv" / "bin" / "ansible-playbook"
GROUPS = {"producer": ["vm1"], "broker": ["vm2"], "inference": ["vm3"], "sink": ["vm4"]}
RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$", re.MULTILINE)


def write_inventory(
    path: Path,
    hosts: dict[str, Host],
    private_key: Path,
    couchdb: tuple[str, ...] = (),
    **groups: tuple[str, ...],
) -> None:
    """The layout of inventory.example.ini, with the test hosts' addresses and root over SSH;
    CouchDB on the sink's VM, or on the hosts named in COUCHDB (a cluster); GROUPS (broker=...,
    inference=...) put other hosts in a group."""
    layout = {**GROUPS, **{name: list(members) for name, members in groups.items()}}
    layout |= {"couchdb": list(couchdb)} if couchdb else {}
    lines: list[str] = []
    for group, names in layout.items():
        lines.append(f"[{group}]")
        lines += [f"{name} ansible_host={hosts[name].address}" for name in names]
        lines.append("")
    lines += [] if couchdb else ["[couchdb:children]", "sink", ""]
    lines += ["[monitoring:children]", "sink", "", "[all:vars]"]
    lines += [
        "ansible_user=root",
        f"ansible_ssh_private_key_file={private_key}",
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
        "ansible_python_interpreter=/usr/bin/python3",
    ]
    path.write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class PlaybookRun:
    returncode: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP: host -> {ok, changed, unreachable, failed, ...}."""
        tail = self.output.rsplit("PLAY RECAP", 1)[-1]
        return {
            m["host"]: {k: int(v) for k, v in (pair.split("=") for pair in m["counts"].split())}
            for m in RECAP_LINE.finditer(tail)
        }

    def changed_tasks(self) -> list[str]:
        """The 'changed: [host]' lines with the task each belongs to, to say what was not idempotent."""
        task = ""
        found = []
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                task = line
            elif line.startswith("changed:"):
                found.append(f"{task} {line}")
        return found


def run_playbook(
    inventory: Path, extra_vars: dict[str, Any], workdir: Path, timeout: float = 2400
) -> PlaybookRun:
    """`ansible-playbook -i INVENTORY site.yml -e @vars.json`; output also kept in WORKDIR."""
    vars_file = workdir / "extra-vars.json"
    vars_file.write_text(json.dumps(extra_vars, indent=2))
    vars_file.chmod(0o600)
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        # The cluster tests have seven hosts: every task on all of them at once, not five and
        # then two (deploy/ansible/README.md says the same to users of more than five).
        "ANSIBLE_FORKS": "10",
        # One SSH round trip per task instead of three (deploy/ansible/README.md advises it too).
        "ANSIBLE_PIPELINING": "True",
    }
    result = run(
        [str(PLAYBOOK_BIN), "-i", str(inventory), str(ANSIBLE / "site.yml"), "-e", f"@{vars_file}"],
        env=env,
        cwd=REPO,
        check=False,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    runs = sorted(workdir.glob("ansible-run-*.log"))
    (workdir / f"ansible-run-{len(runs) + 1}.log").write_text(output)
    return PlaybookRun(result.returncode, output)
