"""Runs: a restarted producer sends the same images under the same IDs.

An image's ID derives from the run id and the plan (`iot_shared.run_plan`). The run id is
`IOT_RUN_ID` when set; otherwise it is kept in `<state_dir>/run-id`, created when a run starts
and removed only when a run ended with every image delivered. So a producer that crashed, was
stopped or failed to deliver resumes the same run with the same IDs (the sink merges a replay
into the same document, writing nothing), and the start after a finished run begins a new run
with new IDs.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from iot_shared.errors import ConfigError
from iot_shared.run_plan import RUN_ID_PATTERN

log = logging.getLogger(__name__)

RUN_ID_FILE = "run-id"
STATE_DIR_HINT = (
    "make IOT_STATE_DIR a writable folder that survives restarts (a volume in a container), or set IOT_RUN_ID"
)


@dataclass(frozen=True)
class Run:
    id: str
    state_dir: Path
    from_state: bool  # False: the id came from IOT_RUN_ID, and no state file is kept
    resumed: bool  # True: an unfinished run's id, read from the state file

    @property
    def undelivered_file(self) -> Path:
        return self.state_dir / f"undelivered-{self.id}.txt"

    def describe(self) -> str:
        if not self.from_state:
            return f"run {self.id} (IOT_RUN_ID)"
        how = "resuming unfinished" if self.resumed else "new"
        return f"{how} run {self.id} (kept in {self.state_dir / RUN_ID_FILE} until every image is delivered)"

    def finish(self) -> None:
        """Every image was delivered: forget this run, so that the next start begins a new one."""
        self.undelivered_file.unlink(missing_ok=True)
        if self.from_state:
            (self.state_dir / RUN_ID_FILE).unlink(missing_ok=True)


def open_run(state_dir: Path, run_id: str | None = None) -> Run:
    """The run to send: `run_id` if given, else the unfinished one in `state_dir`, else a new one."""
    if run_id:
        return Run(run_id, state_dir, from_state=False, resumed=False)
    path = state_dir / RUN_ID_FILE
    try:
        kept = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        kept = None
    except OSError as exc:
        raise ConfigError(f"IOT_STATE_DIR: cannot read {path} ({exc}); {STATE_DIR_HINT}") from exc
    if kept is not None:
        if not RUN_ID_PATTERN.fullmatch(kept):
            raise ConfigError(
                f"IOT_STATE_DIR: {path} does not hold a run id ({kept[:100]!r}); "
                "delete it to start a new run, or set IOT_RUN_ID"
            )
        return Run(kept, state_dir, from_state=True, resumed=True)
    new = str(uuid.uuid4())
    try:
        _write_atomically(path, new + "\n")
    except OSError as exc:
        raise ConfigError(
            f"IOT_STATE_DIR: cannot keep the run id in {path} ({exc}); {STATE_DIR_HINT}"
        ) from exc
    return Run(new, state_dir, from_state=True, resumed=False)


def _write_atomically(path: Path, text: str) -> None:
    """A crash leaves the old file or the new one, never half of one (write, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
