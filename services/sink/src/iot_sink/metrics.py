"""Sink metrics (prefix `iot_sink_`); shared Kafka metrics are in `iot_shared.metrics`."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from iot_shared.metrics import LATENCY_BUCKETS

DOCUMENTS_WRITTEN = Counter("iot_sink_documents_written", "Document revisions written to CouchDB")
DOCUMENTS_COMPLETED = Counter(
    "iot_sink_documents_completed", "Documents that now hold both the image and its prediction"
)
CONFLICTS_RESOLVED = Counter(
    "iot_sink_conflicts_resolved", "Revision conflicts resolved by re-reading and merging"
)
WRITE_RETRIES = Counter("iot_sink_write_retries", "CouchDB writes retried after an error")
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
