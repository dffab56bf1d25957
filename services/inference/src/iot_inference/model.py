"""The CIFAR-10 ResNet-20 of chenyaofo/pytorch-cifar-models, in our own code.

Module names match the published state dict (`conv1`, `layer1.0.bn2`, `layer2.0.downsample.0`,
`fc`, ...) so the released weights load strictly, unchanged. Weights come from a local file
or from the pinned release URL, verified by SHA-256; never through `torch.hub.load`, which
would run code fetched from the internet.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from iot_shared.errors import DataError

log = logging.getLogger(__name__)

WEIGHTS_FILE = "cifar10_resnet20-4118986f.pt"
WEIGHTS_URL = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download/resnet/" + WEIGHTS_FILE
WEIGHTS_SHA256 = "4118986f0df73003d572b0e397f0ac7b3f60af1f31aff3d2da164536e36f6ec8"


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1: nn.Module = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2: nn.Module = nn.BatchNorm2d(planes)
        # Projection shortcut (1x1 conv + BN) only where the shape changes, as published.
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity: Tensor = x if self.downsample is None else self.downsample(x)
        out: Tensor = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.relu(out + identity)
        return out


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: tuple[int, int, int] = (3, 3, 3), classes: int = 10):
        super().__init__()
        self.conv1 = _conv3x3(3, 16)
        self.bn1: nn.Module = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(16, 16, blocks_per_stage[0], stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage[1], stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        logits: Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits


def fold_batch_norms(model: CifarResNet) -> CifarResNet:
    """A copy for serving: each BatchNorm (eval mode: a fixed per-channel scale and shift) folded
    into the convolution before it. The same function, one pass over the data fewer per layer:
    about a quarter of the forward pass's time went to BatchNorm."""
    model = copy.deepcopy(model).eval()
    model.conv1, model.bn1 = _folded(model.conv1, model.bn1)
    for block in model.modules():
        if isinstance(block, BasicBlock):
            block.conv1, block.bn1 = _folded(block.conv1, block.bn1)
            block.conv2, block.bn2 = _folded(block.conv2, block.bn2)
            if isinstance(block.downsample, nn.Sequential):
                block.downsample = _folded(block.downsample[0], block.downsample[1])[0]
    return model


def _folded(conv: nn.Module, bn: nn.Module) -> tuple[nn.Conv2d, nn.Module]:
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"expected Conv2d then BatchNorm2d, got {type(conv).__name__}, {type(bn).__name__}")
    return fuse_conv_bn_eval(conv, bn), nn.Identity()


def resnet20() -> CifarResNet:
    return CifarResNet((3, 3, 3))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_weights(cache_dir: Path | None = None, url: str = WEIGHTS_URL) -> Path:
    """The pinned release file in the torch cache, downloaded once and verified by SHA-256."""
    folder = cache_dir or Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s", url)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=WEIGHTS_SHA256[:8])
        except OSError as exc:  # URLError is an OSError
            raise DataError(
                f"cannot download the model weights from {url} ({exc}); set IOT_WEIGHTS to a local copy"
            ) from exc
    return path


def load_resnet20(weights: Path | None = None) -> CifarResNet:
    """ResNet-20 in eval mode with the published weights; a wrong file is refused, not guessed at."""
    path = weights or fetch_weights()
    if not path.is_file():
        raise DataError(f"model weights not found: {path}")
    digest = sha256_of(path)
    if digest != WEIGHTS_SHA256:
        raise DataError(f"{path}: SHA-256 {digest} is not the published {WEIGHTS_SHA256}")
    model = resnet20()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()
