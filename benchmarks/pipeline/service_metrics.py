"""The inference service's batch-size histogram, read from its /metrics."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.pipeline.results import BatchSizes

BATCH_SIZE_METRIC = "iot_inference_batch_size_images"

# le -> cumulative count, and the histogram's _sum and _count
Snapshot = dict[str, float]


def batch_size_snapshot(port: int) -> Snapshot | None:
    """The histogram now, or None when the service does not export it (or has no /metrics)."""
    try:
        response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        response.raise_for_status()
    except requests.RequestException:
        return None
    snapshot: Snapshot = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != BATCH_SIZE_METRIC:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                snapshot[sample.labels["le"]] = sample.value
            elif sample.name.endswith(("_sum", "_count")):
                snapshot[sample.name.rsplit("_", 1)[1]] = sample.value
    return snapshot or None


def batch_sizes(before: Snapshot | None, after: Snapshot | None) -> BatchSizes | None:
    """What happened between two snapshots (`before` None: since the service started)."""
    if after is None:
        return None
    start = before or {}
    delta = {key: after[key] - start.get(key, 0.0) for key in after}
    batches = int(delta.pop("count", 0))
    images = delta.pop("sum", 0.0)
    bounds = sorted(delta, key=lambda le: float(le))
    buckets: dict[str, int] = {}
    below = 0.0
    for le in bounds:
        if delta[le] - below > 0:
            buckets[_bound(le)] = int(delta[le] - below)
        below = delta[le]
    return BatchSizes(batches, images, images / batches if batches else 0.0, buckets)


def _bound(le: str) -> str:
    return "+Inf" if le == "+Inf" else f"{float(le):g}"
