"""The contract's field names, spelled once (docs/contract.md): the messages' JSON keys, which are
also the fields of each image's CouchDB document."""

from __future__ import annotations

# iot-topic
ID = "ID"
GROUND_TRUTH = "GroundTruth"
DATA = "Data"
PRODUCED_AT = "ProducedAt"
SOURCE = "Source"
# iot-predictions (and ID)
INFERRED_VALUE = "InferredValue"
CONFIDENCE = "Confidence"
MODEL = "Model"
INFERRED_AT = "InferredAt"
# Only in the CouchDB document: the time of its last revision, and the image's PNG attachment.
STORED_AT = "StoredAt"
ATTACHMENT = "image.png"
