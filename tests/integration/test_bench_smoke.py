"""`make bench` in miniature: it runs to the end on its own private stack and writes every section.

No timing is asserted: the machine is shared, and `make bench` reports ratios for people to read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed.paths import REPO

STACK_PROCESSES = {"kafka broker (java)", "zookeeper (java)", "couchdb (erlang)"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert "Goals" in done.stdout
    return json.loads((out / "bench.json").read_text()), out


def positive(section: dict[str, Any], *names: str) -> None:
    for name in names:
        assert section[name] > 0, f"{name} = {section[name]} in {section}"


@pytest.mark.timeout(300)
def test_every_throughput_is_measured(bench: tuple[dict[str, Any], Path]) -> None:
    data, _ = bench
    assert data["model"], "no (a)"
    for model in data["model"]:
        positive(model, "threads", "batch", "images_per_second")
    for stage in ("inference_stage", "sink_stage", "end_to_end", "baseline"):
        positive(data[stage], "items", "per_second", "seconds")
    assert data["end_to_end"]["items"] == 200 and data["baseline"]["items"] == 50


@pytest.mark.timeout(300)
def test_latency_at_each_rate(bench: tuple[dict[str, Any], Path]) -> None:
    data, _ = bench
    assert [lat["rate"] for lat in data["latency"]] == [10, 50, 200]
    for lat in [*data["latency"], data["end_to_end_latency"], data["baseline_latency"]]:
        positive(lat, "images", "p50_ms", "p99_ms", "max_ms", "achieved_rate", "inferred_p99_ms")
        positive(lat, "stored_after_inferred_p99_ms")
        assert lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]


@pytest.mark.timeout(300)
def test_processes_batches_goals_machine(bench: tuple[dict[str, Any], Path]) -> None:
    data, _ = bench
    usage = {p["name"]: p for p in data["end_to_end_usage"]["processes"]}
    assert {"inference", "sink", "producer"} | STACK_PROCESSES <= set(usage)
    for process in usage.values():
        positive(process, "pid", "peak_rss_mib")
        assert process["cpu_seconds"] >= 0
    positive(usage["inference"], "cpu_seconds", "cpu_percent")
    for phase in ("inference_stage_usage", "sink_stage_usage", "end_to_end_usage", "baseline_usage"):
        positive(data[phase], "window_seconds", "machine_busy_percent")
        assert {p["name"] for p in data[phase]["processes"]} >= STACK_PROCESSES

    sizes = data["inference_batch_sizes"]
    positive(sizes, "batches", "images", "mean")
    assert sum(sizes["buckets"].values()) == sizes["batches"]

    goals = [g["name"].split()[0] for g in data["goals"]]
    assert goals == ["(b)/(a)", "(d)/(a)", "(d)/baseline", "p99", "inference"]
    for goal in data["goals"]:
        positive(goal, "value", "target")
        assert isinstance(goal["met"], bool)

    machine = data["machine"]
    positive(machine, "cpus")
    assert len(machine["load_before"]) == len(machine["load_after"]) == 3


@pytest.mark.timeout(300)
def test_chart_and_markdown_written(bench: tuple[dict[str, Any], Path]) -> None:
    _, out = bench
    assert (out / "bench.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "| (d) |" in (out / "bench.md").read_text()
    assert not (out / "run").exists(), "the private stack's data is removed after a successful run"
