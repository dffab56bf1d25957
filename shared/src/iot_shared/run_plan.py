"""Which images a run sends, and under which IDs: a pure function of the run id and the plan.

The producer sends the plan; `iot-audit --run-id R` recomputes the same IDs with no broker, so
an image lost inside Kafka is reported lost instead of never being counted as sent. An image's
ID is a UUIDv5 of the dataset, split, image index, its position in the run (a run that wraps
around or samples with replacement still gives each message its own ID) and the run id.
"""

from __future__ import annotations

import re
import uuid
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, field_validator

Split = Literal["test", "train"]
# CIFAR-10's splits; the producer refuses a copy of another size, since its IDs would differ.
SPLIT_SIZES: dict[Split, int] = {"test": 10_000, "train": 50_000}
DATASET = "cifar10"
# uuid5(NAMESPACE_URL, "urn:iot-pipeline:image-id"). Fixed forever: changing it would give every
# image of a resumed run a new ID.
IMAGE_ID_NAMESPACE = uuid.UUID("f0ecd133-1ca3-5609-956f-0a3b763f38c3")
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,99}")


class RunPlan(BaseModel):
    """The settings that decide which images a run sends: the producer's, and the audit's, under
    the same names (`IOT_COUNT`, `--count`, ...), so both read the same plan."""

    split: Split = Field("test", description="Which CIFAR-10 split to send")
    count: int = Field(6, ge=0, description="How many images to send (0 = the whole split)")
    order: Literal["sequential", "random"] = Field("sequential", description="Which images")
    start: int = Field(0, ge=0, description="First index for sequential order")
    seed: int = Field(0, description="Seed for random order")
    run_id: str | None = Field(
        None, pattern=f"^{RUN_ID_PATTERN.pattern}$", description="Run the image IDs derive from"
    )

    @field_validator("run_id", mode="before")
    @classmethod
    def _empty_run_id_is_unset(cls, value: object) -> object:
        # `IOT_RUN_ID=` (as a template renders an unset variable) means: no run id given.
        return None if value == "" else value

    def indices(self) -> npt.NDArray[np.int64]:
        return choose_indices(SPLIT_SIZES[self.split], self.count, self.order, self.start, self.seed)

    def image_ids(self, run_id: str) -> list[str]:
        """Every ID of run `run_id`, in the order they are sent."""
        return [image_id(run_id, self.split, int(index), pos) for pos, index in enumerate(self.indices())]


def image_id(run_id: str, split: str, index: int, position: int, dataset: str = DATASET) -> str:
    """The ID of the image at `index` of `split`, sent at `position` of run `run_id`."""
    return str(uuid.uuid5(IMAGE_ID_NAMESPACE, f"{dataset}/{split}/{index}/{position}/{run_id}"))


def choose_indices(
    total: int, count: int, order: str, start: int = 0, seed: int = 0
) -> npt.NDArray[np.int64]:
    """Which images to send: `count` of them (0 = all), in file order from `start` or shuffled."""
    count = total if count == 0 else count
    if order == "random":
        rng = np.random.default_rng(seed)
        if count <= total:
            return rng.permutation(total)[:count].astype(np.int64)
        return rng.integers(0, total, size=count, dtype=np.int64)
    # Sequential wraps around, so any count works on any split.
    return (start + np.arange(count, dtype=np.int64)) % total
