"""Inference settings: `IOT_*` environment variables, overridden by `iot-inference --flags`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from iot_shared.settings import ConsumerSettings


class InferenceSettings(ConsumerSettings):
    metrics_port: int = Field(
        8002, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz (0 = off)"
    )
    group_id: str = Field("inference", min_length=1, description="Kafka consumer group")
    weights: Path | None = Field(
        None,
        description="ResNet-20 weights file; unset = download the pinned release once "
        "(SHA-256 verified) into the torch cache",
    )
    max_batch: int = Field(64, ge=1, le=4096, description="Most images in one forward pass")
    torch_threads: int = Field(
        0,
        ge=0,
        description="CPU threads for torch (0 = one fewer than the CPUs available, at least 1: a core is "
        "left for decoding, Kafka and whatever shares the machine)",
    )
