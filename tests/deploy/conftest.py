"""What the Docker and Compose checks share: the tools they run and a small Dockerfile reader."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testbed.paths import REPO

ROLES = ("producer", "inference", "sink")
VENV_BIN = REPO / ".venv" / "bin"


def find_tool(name: str) -> str:
    """A command-line tool the checks need; fails (never skips) with how to get it."""
    path = shutil.which(name) or shutil.which(name, path=str(VENV_BIN))
    assert path, (
        f"{name} is not installed: `make install` installs it (Debian packages via `make tools`, "
        "Python tools via the dev dependency group of the virtualenv)"
    )
    return path


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the line, continuation lines joined

    @property
    def words(self) -> list[str]:
        return shlex.split(self.args)

    def flag(self, name: str) -> str | None:
        """`--name=value` of COPY/ADD/FROM-style flags."""
        for word in self.words:
            if word.startswith(f"--{name}="):
                return word.split("=", 1)[1]
        return None

    @property
    def operands(self) -> list[str]:
        """The words that are not `--flags` (COPY/ADD: sources..., destination)."""
        return [w for w in self.words if not w.startswith("--")]

    def exec_form(self) -> list[str]:
        """ENTRYPOINT/CMD JSON array form; fails for shell form (no signals for the service)."""
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} {self.args} is not in exec form"
        return [str(v) for v in value]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name or self.base}: {len(found)} {keyword} instructions"
        return found[0]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in instruction.words:
                key, _, value = word.partition("=")
                values[key] = value
        return values


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def text(self) -> str:
        return self.path.read_text()


def parse_dockerfile(path: Path) -> Dockerfile:
    # Comment lines go first (Docker drops them even inside continuations), then lines are joined.
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            words = instruction.operands
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert instruction.keyword == "ARG", f"{path}: {line} before the first FROM"
            key, _, value = instruction.args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(path, global_args, stages)


def dockerfile_path(role: str) -> Path:
    return REPO / "services" / role / "Dockerfile"


@pytest.fixture(scope="session")
def dockerfiles() -> dict[str, Dockerfile]:
    return {role: parse_dockerfile(dockerfile_path(role)) for role in ROLES}


@pytest.fixture(scope="module")
def ansible_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty HOME for ansible-playbook and ansible-lint (test_ansible, test_kafka_retention)."""
    home = tmp_path_factory.mktemp("ansible-home")
    (home / "tmp").mkdir()
    return home
