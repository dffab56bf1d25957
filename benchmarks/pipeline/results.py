"""Every figure of one run, as plain dataclasses that become bench.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelRate:
    """(a): `Classifier.predict` (tensor conversion, forward pass, softmax) on decoded pixels."""

    threads: int
    batch: int
    images_per_second: float


@dataclass(frozen=True)
class Throughput:
    """A stage's rate over N items, and how it was timed."""

    name: str
    items: int
    per_second: float
    seconds: float
    timed_by: str


@dataclass(frozen=True)
class BatchSizes:
    """The inference service's `iot_inference_batch_size_images` histogram over one phase."""

    batches: int
    images: float
    mean: float
    buckets: dict[str, int]  # upper bound -> batches in that bucket (not cumulative)


@dataclass(frozen=True)
class Latency:
    """StoredAt - ProducedAt of the stored documents of one producer run, in milliseconds, and its
    two legs: ProducedAt -> InferredAt (broker + inference) and InferredAt -> StoredAt (broker + sink)."""

    rate: float  # images per second asked of the producer; 0 = full speed
    images: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    achieved_rate: float  # images per second the producer really sent
    inferred_p50_ms: float
    inferred_p99_ms: float
    stored_after_inferred_p50_ms: float
    stored_after_inferred_p99_ms: float
    batch_sizes: BatchSizes | None = None


@dataclass(frozen=True)
class ProcessUsage:
    name: str
    pid: int
    cpu_seconds: float
    cpu_percent: float  # of one core, over the whole window
    peak_rss_mib: float
    cuda_libraries_mib: float = 0.0  # resident pages of CUDA libraries at the end of the window


@dataclass(frozen=True)
class Usage:
    window_seconds: float
    processes: list[ProcessUsage]
    machine_busy_percent: float  # all cores together, 100 % = one core busy
    others_percent: float  # machine busy minus the processes above: other users of the machine


@dataclass(frozen=True)
class Goal:
    name: str
    value: float
    target: float
    at_least: bool  # True: value >= target; False: value <= target
    unit: str

    @property
    def met(self) -> bool:
        return self.value >= self.target if self.at_least else self.value <= self.target


@dataclass
class BenchResult:
    config: dict[str, Any]
    machine: dict[str, Any]
    model: list[ModelRate] = field(default_factory=list)
    inference_stage: Throughput | None = None
    inference_batch_sizes: BatchSizes | None = None
    inference_stage_usage: Usage | None = None
    sink_stage: Throughput | None = None
    sink_stage_usage: Usage | None = None
    end_to_end: Throughput | None = None
    end_to_end_latency: Latency | None = None
    end_to_end_batch_sizes: BatchSizes | None = None
    end_to_end_usage: Usage | None = None
    latency: list[Latency] = field(default_factory=list)
    baseline: Throughput | None = None
    baseline_latency: Latency | None = None
    baseline_usage: Usage | None = None
    goals: list[Goal] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["goals"] = [{**asdict(goal), "met": goal.met} for goal in self.goals]
        return data

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
