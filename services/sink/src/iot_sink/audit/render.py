"""The audit's report as a table for a terminal."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from iot_sink.audit.ledger import Ids, Report


def render_table(report: Report, console: Console) -> None:
    title = f"Delivery audit: {report.images_topic} + {report.predictions_topic} -> {report.db}"
    if report.run_id is not None:
        title = f"Delivery audit: run {report.run_id} -> {report.db} (IDs recomputed, topics not read)"
    elif report.since is not None:
        title += f" (since {datetime.fromtimestamp(report.since, UTC).isoformat()})"
    table = Table(title=title, title_justify="left")
    table.add_column("check")
    table.add_column("count", justify="right")
    table.add_column("IDs (first few)", overflow="fold")

    def ids(value: Ids) -> str:
        return ", ".join(value.ids) + (" ..." if value.count > len(value.ids) else "")

    def row(name: str, value: int | Ids, bad: bool = False) -> None:
        count = value if isinstance(value, int) else value.count
        style = "bold red" if bad and count else None
        table.add_row(name, f"{count:,}", "" if isinstance(value, int) else ids(value), style=style)

    if report.run_id is not None:
        row("planned (the run's IDs)", report.produced)
    else:
        row("produced (distinct IDs)", report.produced)
        row("image records", report.image_records)
        row("  IDs sent more than once", report.duplicate_images)
        row("predicted (distinct IDs)", report.predicted)
        row("prediction records", report.prediction_records)
        row("  IDs predicted more than once", report.duplicate_predictions)
    row("documents", report.documents)
    row("stored complete", report.complete)
    row("missing a prediction", report.missing_prediction, bad=True)
    row("missing an image", report.missing_image, bad=True)
    row("lost (never stored)", report.lost, bad=True)
    if report.run_id is not None:
        row("documents of other runs", report.not_audited)
    else:
        _kafka_rows(report, table, row)
    console.print(table)
    _verdict(report, console)


def _kafka_rows(report: Report, table: Table, row: Callable[..., None]) -> None:
    """What only reading the topics can tell: extra IDs, ground truth, bad records."""
    row("extra (ID never produced)", report.extra, bad=True)
    row("ground truth differs", report.ground_truth_mismatch, bad=True)
    row("predictions of unknown IDs", report.orphan_predictions)
    if report.since is not None:
        row("documents before --since", report.not_audited)
    for name, count in report.bad_records.items():
        row(f"bad record, {name}", count)
    for label, records, bad in (
        ("not dead-lettered", report.not_dead_lettered, True),
        ("dead-lettered with another reason", report.dead_letter_reason_differs, False),
    ):
        detail = ", ".join(
            f"{r.topic}[{r.partition}]@{r.offset} {r.reason} {r.dead_lettered_by}" for r in records
        )
        table.add_row(
            label, f"{len(records):,}", detail[:2000], style="bold red" if bad and records else None
        )


def _verdict(report: Report, console: Console) -> None:
    if report.ok:
        console.print(f"OK: all {report.produced:,} images are stored complete, nothing extra")
    else:
        problems = ", ".join(f"{name} {n:,}" for name, n in report.problems.items())
        console.print(f"PROBLEMS: {problems}", style="bold red")
