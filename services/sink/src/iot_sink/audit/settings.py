"""`iot-audit`'s settings."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from iot_shared.run_plan import RUN_ID_PATTERN, RunPlan
from iot_shared.settings import CouchSettings


class AuditSettings(CouchSettings, RunPlan):
    """Where to look: the same `IOT_*` variables as the services (the producer's plan among
    them, for `--run-id`), and a few of the audit's own."""

    model_config = SettingsConfigDict(cli_shortcuts={"json-output": "json"})

    couchdb_user: str = Field("iot_reader", min_length=1, description="CouchDB user: reading is enough")
    since: datetime | None = Field(
        None,
        description="Audit only records from this time on: ISO 8601 (UTC unless it says otherwise) "
        "or Unix epoch seconds; unset = from the beginning",
    )
    json_output: bool = Field(False, description="Print the report as JSON (--json)")
    page_size: int = Field(1000, ge=1, le=10000, description="Documents per CouchDB request")
    kafka_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest wait for the broker: metadata, watermarks, a silent partition"
    )
    list_ids: int = Field(20, ge=0, description="Most IDs listed per problem; the counts are always complete")
    run_id: str | None = Field(
        None,
        pattern=f"^{RUN_ID_PATTERN.pattern}$",
        description="Audit this producer run: its IDs are recomputed from the run id and the plan "
        "(count, split, order, start, seed, as the producer had them), without the broker; "
        "unset = audit what the topics hold",
    )

    @model_validator(mode="after")
    def _one_scope(self) -> AuditSettings:
        if self.run_id is not None and self.since is not None:
            raise ValueError("give --run-id or --since, not both: a run is its own window")
        return self

    @property
    def since_epoch(self) -> float | None:
        if self.since is None:
            return None
        since = self.since if self.since.tzinfo else self.since.replace(tzinfo=UTC)
        return since.timestamp()
