"""The run as tables: rich for the terminal, Markdown (bench.md) for docs/benchmark.md."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from benchmarks.pipeline.results import BatchSizes, BenchResult, Latency, Throughput

Row = list[str]


def throughput_rows(result: BenchResult) -> list[Row]:
    model = result.model[0].images_per_second if result.model else 0.0

    def row(label: str, what: str, t: Throughput | None) -> Row | None:
        if t is None:
            return None
        ratio = f"{t.per_second / model:.2f}" if model else "-"
        return [label, what, f"{t.items:,}", f"{t.per_second:,.0f}", ratio, t.timed_by]

    torch_default = result.machine.get("torch_default_threads")
    rows: list[Row | None] = [
        [
            "(a)",
            f"model, batch {m.batch}, {m.threads} thread{'s' if m.threads > 1 else ''}"
            + _whose_threads(i, m.threads == torch_default),
            "",
            f"{m.images_per_second:,.0f}",
            f"{m.images_per_second / model:.2f}",
            "Classifier.predict on pixels",
        ]
        for i, m in enumerate(result.model)
    ]
    rows += [
        row("(b)", "inference service alone (images/s)", result.inference_stage),
        row("(c)", "sink service alone (docs/s)", result.sink_stage),
        row("(d)", "producer + inference + sink (images/s)", result.end_to_end),
        row("base", "seed-style baseline end to end", result.baseline),
    ]
    return [r for r in rows if r is not None]


def _whose_threads(index: int, is_torch_default: bool) -> str:
    if index == 0:
        return " (service default = torch's)" if is_torch_default else " (service default)"
    return " (torch default)"


THROUGHPUT_HEADER = ["", "stage", "N", "per second", "vs (a)", "timed"]


def goal_rows(result: BenchResult) -> list[Row]:
    def fmt(value: float, unit: str) -> str:
        return f"{value:.2f}x" if unit == "x" else f"{value:,.0f} {unit}"

    return [
        [
            g.name,
            fmt(g.value, g.unit),
            ("≥ " if g.at_least else "≤ ") + fmt(g.target, g.unit),
            "met" if g.met else "not met",
        ]
        for g in result.goals
    ]


GOAL_HEADER = ["ratio", "value", "goal", ""]


def latency_rows(result: BenchResult) -> list[Row]:
    def row(label: str, lat: Latency | None, sizes: BatchSizes | None) -> Row | None:
        if lat is None:
            return None
        return [
            label,
            f"{lat.images:,}",
            f"{lat.achieved_rate:,.0f}",
            f"{lat.p50_ms:,.0f}",
            f"{lat.p99_ms:,.0f}",
            f"{lat.max_ms:,.0f}",
            f"{lat.inferred_p99_ms:,.0f}",
            f"{lat.stored_after_inferred_p99_ms:,.0f}",
            f"{sizes.mean:.1f}" if sizes else "-",
        ]

    rows = [row(f"{lat.rate:g} images/s", lat, lat.batch_sizes) for lat in result.latency]
    rows.append(row("(d) full speed", result.end_to_end_latency, result.end_to_end_batch_sizes))
    rows.append(row("baseline, full speed", result.baseline_latency, None))
    return [r for r in rows if r is not None]


LATENCY_HEADER = [
    "producer rate",
    "images",
    "sent/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "p99 to InferredAt",
    "p99 InferredAt to StoredAt",
    "mean batch",
]


def usage_rows(result: BenchResult) -> list[Row]:
    """CPU (% of one core) of each process in each phase; CPU seconds and peak RSS during (d)."""
    e2e = result.end_to_end_usage
    if e2e is None:
        return []
    phases = [result.inference_stage_usage, result.sink_stage_usage, e2e, result.baseline_usage]
    by_phase = [{p.name: p for p in u.processes} if u else {} for u in phases]
    names = [p.name for p in sorted(e2e.processes, key=lambda p: -p.cpu_seconds)]
    names += [name for usage in by_phase for name in usage if name not in names]

    def percent(phase: int, name: str) -> str:
        process = by_phase[phase].get(name)
        return f"{process.cpu_percent:.0f}" if process else ""

    rows = []
    for name in names:
        d = by_phase[2].get(name)
        rows.append(
            [
                name,
                percent(0, name),
                percent(1, name),
                f"{d.cpu_seconds:.1f}" if d else "",
                percent(2, name),
                f"{d.peak_rss_mib:,.0f}" if d else "",
                f"{d.cuda_libraries_mib:,.0f}" if d and d.cuda_libraries_mib else "",
                percent(3, name),
            ]
        )
    others = [u.others_percent if u else None for u in phases]
    machine = [u.machine_busy_percent if u else None for u in phases]
    rows.append(_machine_row("other processes on the machine", others))
    full = 100 * int(result.machine.get("cpus") or 1)
    rows.append(_machine_row(f"machine, all cores ({full} = all busy)", machine))
    return rows


def _machine_row(label: str, per_phase: list[float | None]) -> Row:
    b, c, d, base = (f"{value:.0f}" if value is not None else "" for value in per_phase)
    return [label, b, c, "", d, "", "", base]


USAGE_HEADER = [
    "process",
    "(b) CPU %",
    "(c) CPU %",
    "(d) CPU s",
    "(d) CPU %",
    "(d) peak RSS MiB",
    "of it CUDA libraries MiB",
    "baseline CPU %",
]


def batch_rows(result: BenchResult) -> list[Row]:
    phases: list[tuple[str, BatchSizes | None]] = [
        ("(b) inference alone", result.inference_batch_sizes),
        ("(d) full speed", result.end_to_end_batch_sizes),
    ] + [(f"(e) {lat.rate:g} images/s", lat.batch_sizes) for lat in result.latency]
    return [
        [name, f"{s.batches:,}", f"{s.mean:.1f}", "  ".join(f"≤{le}: {n}" for le, n in s.buckets.items())]
        for name, s in phases
        if s is not None
    ]


BATCH_HEADER = ["phase", "batches", "mean size", "batches by size (histogram bucket)"]


def machine_line(result: BenchResult) -> str:
    m = result.machine
    return (
        f"{m['cpus']} CPUs, load average {m['load_before'][0]:.2f} before, {m['load_after'][0]:.2f} after; "
        f"commit {m['commit']}; run took {result.seconds:.0f} s"
    )


def print_report(result: BenchResult, console: Console) -> None:
    sections = [
        ("Throughput", THROUGHPUT_HEADER, throughput_rows(result)),
        ("Goals", GOAL_HEADER, goal_rows(result)),
        ("Latency StoredAt - ProducedAt", LATENCY_HEADER, latency_rows(result)),
        ("Processes: CPU as % of one core over each phase", USAGE_HEADER, usage_rows(result)),
        ("Inference batch sizes (iot_inference_batch_size_images)", BATCH_HEADER, batch_rows(result)),
    ]
    for title, header, rows in sections:
        if not rows:
            continue
        table = Table(title=title, title_justify="left")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 or name in ("stage", "timed") else "right")
        for row in rows:
            if title == "Goals":
                row = [*row[:-1], f"[green]{row[-1]}" if row[-1] == "met" else f"[bold red]{row[-1]}"]
            table.add_row(*row)
        console.print(table)
    console.print(machine_line(result))


def markdown(result: BenchResult) -> str:
    parts = []
    for header, rows in (
        (THROUGHPUT_HEADER, throughput_rows(result)),
        (GOAL_HEADER, goal_rows(result)),
        (LATENCY_HEADER, latency_rows(result)),
        (USAGE_HEADER, usage_rows(result)),
    ):
        if rows:
            lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            parts.append("\n".join(lines))
    parts.append(machine_line(result))
    return "\n\n".join(parts) + "\n"
