"""Where the read-only test data lives: `../shared/` beside the checkout (never copied in)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IOT_TEST_DATA", REPO.parent / "shared"))
CIFAR_DIR = DATA / "cifar10"
WEIGHTS = DATA / "models" / "cifar10_resnet20-4118986f.pt"
# Top-1 of the published weights on this (JPEG-decoded) copy of the test set; see its SOURCE.md.
EXPECTED_ACCURACY = 0.8105
