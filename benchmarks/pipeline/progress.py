"""One rich progress bar per phase of the run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class Phase:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def update(self, completed: float) -> float:
        self._progress.update(self._task, completed=completed)
        return completed

    def advance(self, amount: float) -> None:
        self._progress.advance(self._task, amount)

    def note(self, text: str) -> None:
        self._progress.update(self._task, status=text)


class Phases:
    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description:<34}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[status]}"),
            console=console,
        )

    def __enter__(self) -> Phases:
        self.progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.progress.stop()

    @contextmanager
    def phase(self, description: str, total: float | None = None) -> Iterator[Phase]:
        task = self.progress.add_task(description, total=total, status="")
        yield Phase(self.progress, task)
        self.progress.update(task, completed=total if total is not None else 1, total=total or 1)
