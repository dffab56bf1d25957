"""One whole run: private stack up, (a) to (e) and the baseline, stack down (also on failure)."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import subprocess
import time
from typing import Any

import psutil
import torch
from rich.console import Console

from benchmarks.pipeline import stages
from benchmarks.pipeline.bench import Bench
from benchmarks.pipeline.config import REPO, BenchConfig
from benchmarks.pipeline.goals import evaluate
from benchmarks.pipeline.kafka import Broker
from benchmarks.pipeline.model import TORCH_DEFAULT_THREADS, measure_model, service_defaults
from benchmarks.pipeline.progress import Phases
from benchmarks.pipeline.results import BenchResult
from iot_producer.cifar import load_split
from testbed.paths import CIFAR_DIR, WEIGHTS
from testbed.private_stack import PrivateStack


def run(config: BenchConfig, console: Console) -> BenchResult:
    shutil.rmtree(config.run_dir, ignore_errors=True)
    (config.run_dir / "logs").mkdir(parents=True)
    result = BenchResult(config=_jsonable(dataclasses.asdict(config)), machine=machine_info())
    started = time.monotonic()
    # stack.sh's own output goes to a log file rather than across the progress bars.
    stack = PrivateStack(config.run_dir / "stack", log_file=config.run_dir / "stack.log")
    broker: Broker | None = None
    with Phases(console) as phases:
        try:
            with phases.phase("start the private stack"):
                stack.start()
            broker = Broker(stack.stack.bootstrap)
            measure(Bench(config, stack, phases, broker), result)
        finally:
            if broker is not None:
                broker.close()
            with phases.phase("stop the private stack"):
                stack.stop()
    result.machine["load_after"] = list(os.getloadavg())
    result.seconds = time.monotonic() - started
    result.goals = evaluate(result)
    return result


def measure(bench: Bench, result: BenchResult) -> None:
    batch, threads = service_defaults()
    images = list(load_split(CIFAR_DIR, "test").images[: bench.config.model_images])
    counts = list(dict.fromkeys([threads, TORCH_DEFAULT_THREADS]))
    repeats = bench.config.model_repeats
    with bench.phases.phase("(a) model alone", len(images) * repeats * len(counts)) as phase:
        result.model = measure_model(WEIGHTS, images, counts, batch, repeats, phase.advance)

    parts = stages.stages(bench)
    result.inference_stage = parts.inference
    result.inference_batch_sizes = parts.batch_sizes
    result.inference_stage_usage = parts.inference_usage
    result.sink_stage = parts.sink
    result.sink_stage_usage = parts.sink_usage

    e2e = stages.end_to_end(bench)
    result.end_to_end = e2e.throughput
    result.end_to_end_latency = e2e.latency
    result.end_to_end_batch_sizes = e2e.batch_sizes
    result.end_to_end_usage = e2e.usage
    result.latency = e2e.rates

    base = stages.baseline(bench)
    result.baseline = base.throughput
    result.baseline_latency = base.latency
    result.baseline_usage = base.usage


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_before": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_default_threads": TORCH_DEFAULT_THREADS,
        "commit": _commit(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _commit() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    done = subprocess.run(  # noqa: S603  (git, fixed arguments)
        [git, "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    return str(value) if isinstance(value, os.PathLike) else value
