"""Sink metrics (prefix `iot_sink_`); shared Kafka metrics are in `iot_shared.metrics`."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from iot_shared.metrics import LATENCY_BUCKETS
from iot_shared.schema import CLASSES

DOCUMENTS_WRITTEN = Counter("iot_sink_documents_written", "Document revisions written to CouchDB")
DOCUMENTS_COMPLETED = Counter(
    "iot_sink_documents_completed", "Documents that now hold both the image and its prediction"
)
CONFLICTS_RESOLVED = Counter(
    "iot_sink_conflicts_resolved", "Revision conflicts resolved by re-reading and merging"
)
WRITE_RETRIES = Counter("iot_sink_write_retries", "CouchDB writes retried after an error")
REVISIONS_MERGED = Counter(
    "iot_sink_revisions_merged",
    "Documents whose conflicting revisions (which a CouchDB cluster keeps) were merged into one",
)
COUCHDB_SECONDS = Histogram(
    "iot_sink_couchdb_request_duration_seconds",
    "CouchDB request latency",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
END_TO_END_SECONDS = Histogram(
    "iot_sink_end_to_end_latency_seconds",
    "From ProducedAt to the document holding image and prediction",
    buckets=LATENCY_BUCKETS,
)

# Every image carries its ground truth, so the model is scored live: the confusion matrix
# (accuracy, per-class recall) and the confidence of right and wrong answers (a drift signal).
PREDICTIONS_SCORED = Counter(
    "iot_sink_predictions_scored",
    "Completed documents by ground truth and predicted class (the confusion matrix)",
    ["truth", "predicted"],
)
PREDICTION_CONFIDENCE = Histogram(
    "iot_sink_prediction_confidence",
    "Confidence of the stored prediction, for correct and wrong predictions",
    ["outcome"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0),
)
for _truth in CLASSES:
    for _predicted in CLASSES:
        PREDICTIONS_SCORED.labels(_truth, _predicted)  # all 100 cells exported from the start, at 0
for _outcome in ("correct", "wrong"):
    PREDICTION_CONFIDENCE.labels(_outcome)


def observe_scored(truth: str, predicted: str, confidence: float) -> None:
    """Score one completed document against its ground truth."""
    PREDICTIONS_SCORED.labels(truth, predicted).inc()
    PREDICTION_CONFIDENCE.labels("correct" if truth == predicted else "wrong").observe(confidence)
