"""Running the tools the deployment tests drive, with errors that show what they printed."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


class CommandError(RuntimeError):
    pass


def run(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float = 600,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run COMMAND, capture its output; on failure raise with the command and its output."""
    result = subprocess.run(
        list(command),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise CommandError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-4000:]}{result.stdout[-4000:]}"
        )
    return result
