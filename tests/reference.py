"""A plain functional ResNet-20 forward pass, straight from the published state dict.

It shares no code with `iot_inference` (no nn.Module, no preprocessing helper), so agreeing
with it shows that the service's model, weights loading and preprocessing are right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)


class ReferenceResNet20:
    def __init__(self, weights: Path) -> None:
        self.w: dict[str, Tensor] = torch.load(weights, map_location="cpu", weights_only=True)

    def _bn(self, x: Tensor, name: str) -> Tensor:
        w = self.w
        return F.batch_norm(
            x, w[f"{name}.running_mean"], w[f"{name}.running_var"], w[f"{name}.weight"],
            w[f"{name}.bias"], training=False, eps=1e-5,
        )  # fmt: skip

    def _block(self, x: Tensor, name: str, stride: int) -> Tensor:
        out = F.relu(
            self._bn(F.conv2d(x, self.w[f"{name}.conv1.weight"], stride=stride, padding=1), f"{name}.bn1")
        )
        out = self._bn(F.conv2d(out, self.w[f"{name}.conv2.weight"], padding=1), f"{name}.bn2")
        if f"{name}.downsample.0.weight" in self.w:
            x = self._bn(
                F.conv2d(x, self.w[f"{name}.downsample.0.weight"], stride=stride), f"{name}.downsample.1"
            )
        return F.relu(out + x)

    def logits(self, images: npt.NDArray[np.uint8]) -> Tensor:
        """images: (N, 32, 32, 3) uint8 RGB."""
        x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        x = (x - MEAN) / STD
        with torch.no_grad():
            x = F.relu(self._bn(F.conv2d(x, self.w["conv1.weight"], padding=1), "bn1"))
            for stage, first_stride in ((1, 1), (2, 2), (3, 2)):
                for block in range(3):
                    x = self._block(x, f"layer{stage}.{block}", first_stride if block == 0 else 1)
            x = x.mean(dim=(2, 3))
            return F.linear(x, self.w["fc.weight"], self.w["fc.bias"])

    def top1(self, images: npt.NDArray[np.uint8], batch: int = 500) -> npt.NDArray[np.int64]:
        parts = [self.logits(images[i : i + batch]).argmax(1).numpy() for i in range(0, len(images), batch)]
        return np.concatenate(parts).astype(np.int64)
