"""Producer settings: `IOT_*` environment variables, overridden by `iot-producer --flags`."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field

from iot_shared.run_plan import RUN_ID_PATTERN, RunPlan
from iot_shared.settings import LoopSettings


class ProducerSettings(LoopSettings, RunPlan):
    metrics_port: int = Field(
        8001, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz (0 = off)"
    )
    data_dir: Path | None = Field(
        None,
        description="Local CIFAR-10 binary copy (folder of cifar-10-batches-bin); "
        "unset = download the official archive once into cache-dir",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "iot-pipeline" / "cifar10",
        description="Where the downloaded CIFAR-10 archive is kept",
    )
    interval_seconds: float = Field(10.0, ge=0, description="Seconds between two images")
    rate: float | None = Field(
        None, ge=0, description="Images per second, overrides interval-seconds (0 = full speed)"
    )
    source_id: str = Field(
        default_factory=lambda: f"producer@{socket.gethostname()}",
        min_length=1,
        description="Written into each message's Source field",
    )
    flush_timeout_seconds: float = Field(
        60.0, gt=0, description="How long to wait at exit for unacknowledged images"
    )
    run_id: str | None = Field(
        None,
        pattern=f"^{RUN_ID_PATTERN.pattern}$",
        description="Run the image IDs derive from (same run id = same IDs); unset = the unfinished "
        "run kept in state-dir, or a new run after a finished one",
    )
    state_dir: Path = Field(
        Path.home() / ".local" / "state" / "iot-pipeline" / "producer",
        description="Where the current run id is kept until every image of the run is delivered; "
        "must survive restarts (a volume in a container)",
    )

    @property
    def seconds_between_images(self) -> float:
        if self.rate is None:
            return self.interval_seconds
        return 0.0 if self.rate == 0 else 1.0 / self.rate
