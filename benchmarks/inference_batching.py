"""How much micro-batching buys: ResNet-20 images/s at several batch sizes, as ratios to batch 1.

Ratios, measured in one run, are what to compare: this machine is shared and absolute numbers
move with its load. Usage: .venv/bin/python benchmarks/inference_batching.py [--images 2048]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from iot_inference.classifier import Classifier
from iot_inference.model import load_resnet20
from iot_producer.cifar import load_split
from iot_shared.png import Pixels

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared"


def images_per_second(classifier: Classifier, images: list[Pixels], batch: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(images), batch):
            classifier.predict(images[i : i + batch])
        rates.append(len(images) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", type=Path, default=DATA / "models" / "cifar10_resnet20-4118986f.pt")
    parser.add_argument("--data-dir", type=Path, default=DATA / "cifar10")
    args = parser.parse_args()
    classifier = Classifier(load_resnet20(args.weights))
    images = list(load_split(args.data_dir, "test").images[: args.images])
    classifier.predict(images[:64])  # warm-up
    base = None
    print(f"{'batch':>6} {'images/s':>10} {'vs batch 1':>11}")
    for batch in (1, 8, 64, 256):
        rate = images_per_second(classifier, images, batch, args.repeats)
        base = base or rate
        print(f"{batch:>6} {rate:>10.0f} {rate / base:>10.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
