"""The run id survives restarts of an unfinished run; a finished run makes way for a new one."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from iot_producer.runs import RUN_ID_FILE, open_run
from iot_shared.errors import ConfigError


def test_a_first_start_creates_a_run_and_keeps_its_id(tmp_path: Path) -> None:
    state = tmp_path / "state" / "producer"  # created if missing
    run = open_run(state)
    assert not run.resumed and run.from_state
    assert (state / RUN_ID_FILE).read_text() == f"{run.id}\n"
    assert uuid.UUID(run.id)
    assert [p.name for p in state.iterdir()] == [RUN_ID_FILE]  # no temporary file left


def test_a_restart_of_an_unfinished_run_gets_the_same_id(tmp_path: Path) -> None:
    first = open_run(tmp_path)
    again = open_run(tmp_path)
    assert again.id == first.id and again.resumed
    assert "resuming unfinished run" in again.describe()


def test_after_a_finished_run_the_next_start_is_a_new_run(tmp_path: Path) -> None:
    first = open_run(tmp_path)
    first.finish()
    assert not (tmp_path / RUN_ID_FILE).exists()
    second = open_run(tmp_path)
    assert second.id != first.id and not second.resumed


def test_a_run_id_from_the_settings_wins_and_touches_no_state(tmp_path: Path) -> None:
    open_run(tmp_path / "a")
    run = open_run(tmp_path / "a", "nightly-42")
    assert (run.id, run.from_state) == ("nightly-42", False)
    run.finish()
    assert (tmp_path / "a" / RUN_ID_FILE).exists()  # the other, unfinished run is still there
    assert open_run(tmp_path / "b", "nightly-42").id == "nightly-42"
    assert not (tmp_path / "b").exists()


def test_a_damaged_state_file_stops_the_producer_naming_it(tmp_path: Path) -> None:
    (tmp_path / RUN_ID_FILE).write_text("not a run id\n")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / RUN_ID_FILE} does not hold a run id")):
        open_run(tmp_path)


def test_a_state_dir_that_cannot_be_written_stops_the_producer_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")  # as unwritable as it gets, for root too
    with pytest.raises(ConfigError, match=r"IOT_STATE_DIR: cannot read .* or set IOT_RUN_ID"):
        open_run(tmp_path / "not-a-folder")
    # A write that fails (root may write anywhere, but not a file where a folder is).
    (tmp_path / "state" / f".{RUN_ID_FILE}.{os.getpid()}.tmp").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"IOT_STATE_DIR: cannot keep the run id .* or set IOT_RUN_ID"):
        open_run(tmp_path / "state")
