"""bench.png: throughput of each stage beside the model's, latency percentiles per rate, and the batch
size the inference chose in each regime."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from benchmarks.pipeline.goals import END_TO_END_VS_MODEL, INFERENCE_VS_MODEL
from benchmarks.pipeline.results import BenchResult

GOALS_VS_MODEL = {"(b)": INFERENCE_VS_MODEL, "(d)": END_TO_END_VS_MODEL}


def throughput_bars(result: BenchResult) -> list[tuple[str, float]]:
    bars = [(f"(a) model\n{m.threads} thr", m.images_per_second) for m in result.model[:1]]
    for label, stage in (
        ("(b) inference\nalone", result.inference_stage),
        ("(c) sink\nalone", result.sink_stage),
        ("(d) end to end", result.end_to_end),
        ("seed-style\nbaseline", result.baseline),
    ):
        if stage is not None:
            bars.append((label, stage.per_second))
    return bars


def regimes(result: BenchResult) -> list[tuple[str, float]]:
    """Mean images per forward pass at each fixed rate and at full speed: the adaptive batching's
    two regimes, one image at a time while it keeps up, large batches under a backlog."""
    runs = [(f"{lat.rate:g}/s", lat.batch_sizes) for lat in result.latency]
    runs.append(("full\nspeed", result.end_to_end_batch_sizes))
    return [(label, sizes.mean) for label, sizes in runs if sizes is not None]


def regime_bars(result: BenchResult, axes: Axes) -> None:
    bars = regimes(result)
    if not bars:
        axes.set_axis_off()
        return
    labels, means = zip(*bars, strict=True)
    drawn = axes.bar(labels, means, color="#9467bd")
    axes.bar_label(drawn, fmt="{:,.1f}")
    axes.set_ylabel("mean images per forward pass")
    axes.set_title("Batch size the inference chose")


def write_chart(result: BenchResult, path: Path) -> None:
    fig, (left, right, batches) = plt.subplots(1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [5, 4, 3]})
    labels, values = zip(*throughput_bars(result), strict=True)
    colours = ["#777777", "#1f77b4", "#2ca02c", "#d62728", "#bbbbbb"]
    drawn = left.bar(labels, values, color=colours[: len(values)])
    left.bar_label(drawn, fmt="{:,.0f}")
    model = result.model[0].images_per_second if result.model else 0.0
    for pos, label in enumerate(labels):
        goal = GOALS_VS_MODEL.get(label.split()[0])
        if goal and model:
            left.hlines(goal * model, pos - 0.4, pos + 0.4, colors="black", linestyles="--", linewidth=0.8)
            left.annotate(
                f"goal {goal:g}x (a)",
                (pos, goal * model),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=7,
            )
    left.set_ylabel("images (documents) per second")
    config = result.config
    left.set_title(f"Throughput, N = {config['images']:,} (baseline N = {config['baseline_images']:,})")

    rates = result.latency
    x = np.arange(len(rates))
    for i, (name, field) in enumerate((("p50", "p50_ms"), ("p99", "p99_ms"), ("max", "max_ms"))):
        bars = right.bar(x + (i - 1) * 0.27, [getattr(lat, field) for lat in rates], 0.27, label=name)
        right.bar_label(bars, fmt="{:,.0f}", fontsize=7)
    right.axhline(50, color="black", linestyle="--", linewidth=0.8, label="goal: p99 at 50/s ≤ 50 ms")
    right.set_xticks(x, [f"{lat.rate:g} images/s" for lat in rates])
    right.set_yscale("log")
    right.set_ylabel("StoredAt - ProducedAt, ms (log)")
    right.set_title("Latency at fixed producer rates")
    right.legend(fontsize=8)
    regime_bars(result, batches)
    machine = result.machine
    fig.suptitle(f"make bench: {machine['cpus']} CPUs, commit {machine['commit']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
