"""Turn a batch of 32x32 RGB images into class names and softmax confidences."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from iot_inference.model import CifarResNet, fold_batch_norms
from iot_shared.png import Pixels
from iot_shared.schema import CLASSES

# The published model's training normalization (chenyaofo, logs/cifar10/resnet20).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    confidence: float


def to_tensor(images: Sequence[Pixels]) -> torch.Tensor:
    """HWC uint8 -> normalized NCHW float32, the same as ToTensor + Normalize."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (batch - mean) / std


class Classifier:
    def __init__(self, model: CifarResNet) -> None:
        self._model = fold_batch_norms(model)

    def predict(self, images: Sequence[Pixels]) -> list[Prediction]:
        if not images:
            return []
        with torch.inference_mode():
            probs = torch.softmax(self._model(to_tensor(images)), dim=1)
        confidence, index = probs.max(dim=1)
        return [Prediction(CLASSES[i], c) for i, c in zip(index.tolist(), confidence.tolist(), strict=True)]
