"""(a) The raw model: `Classifier.predict` at the service's batch size, in this process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks.pipeline.results import ModelRate
from iot_inference import app as inference_app
from iot_inference.classifier import Classifier
from iot_inference.model import load_resnet20
from iot_inference.settings import InferenceSettings
from iot_shared.png import Pixels

# torch's own choice, read before anything here changes it.
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def service_defaults() -> tuple[int, int]:
    """The inference service's default batch size and torch threads.

    IOT_TORCH_THREADS=0 means the service's own choice where it has one (`default_torch_threads`),
    torch's default where it has not.
    """
    fields = InferenceSettings.model_fields
    batch = int(fields["max_batch"].default)
    service_rule = getattr(inference_app, "default_torch_threads", lambda: TORCH_DEFAULT_THREADS)
    threads = int(fields["torch_threads"].default) or int(service_rule())
    return batch, threads


def measure_model(
    weights: Path,
    images: Sequence[Pixels],
    thread_counts: Sequence[int],
    batch: int,
    repeats: int,
    advance: Callable[[int], None],
) -> list[ModelRate]:
    classifier = Classifier(load_resnet20(weights))
    rates = []
    for threads in dict.fromkeys(thread_counts):  # each count once, in order
        torch.set_num_threads(threads)
        classifier.predict(images[:batch])  # warm-up: allocations, kernels chosen
        passes = []
        for _ in range(repeats):
            passes.append(_one_pass(classifier, images, batch))
            advance(len(images))
        rates.append(ModelRate(threads, batch, statistics.median(passes)))
    torch.set_num_threads(TORCH_DEFAULT_THREADS)
    return rates


def _one_pass(classifier: Classifier, images: Sequence[Pixels], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        classifier.predict(images[i : i + batch])
    return len(images) / (time.perf_counter() - started)
