"""Sink settings: `IOT_*` environment variables, overridden by `iot-sink --flags`."""

from __future__ import annotations

from pydantic import Field

from iot_shared.settings import ConsumerSettings, CouchSettings


class SinkSettings(CouchSettings, ConsumerSettings):
    metrics_port: int = Field(
        8003, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz (0 = off)"
    )
    couchdb_user: str = Field(
        "iot_sink", min_length=1, description="CouchDB user: a member of the database, not a server admin"
    )
    group_id: str = Field("sink", min_length=1, description="Kafka consumer group")
    max_batch: int = Field(500, ge=1, le=10000, description="Most messages in one CouchDB bulk write")
    conflict_sweep_seconds: float = Field(
        10.0,
        ge=0,
        description="How often to look for documents a CouchDB cluster kept in conflicting revisions "
        "(after nodes were down or cut off) and merge them (0 = never: one CouchDB server has none)",
    )
    max_wait_ms: int = Field(
        50,
        ge=0,
        description="After a batch's first record, how long at most to wait for more, never past "
        "IOT_LATENCY_TARGET_MS: the wait ends as soon as every image in the batch has its prediction and "
        "back, so a document is written once, whole (0 = take what has arrived)",
    )
