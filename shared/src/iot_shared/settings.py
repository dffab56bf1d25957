"""Typed settings shared by every service: environment variables prefixed `IOT_`, CLI flags override.

Each service subclasses `ServiceSettings` in its own `settings.py`; `load_settings` builds it
inside `main()` and turns a validation error into a `ConfigError` that names the variable.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from iot_shared.errors import ConfigError

ENV_PREFIX = "IOT_"

S = TypeVar("S", bound="ServiceSettings")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_avoid_json=True,
        frozen=True,
        extra="ignore",
    )

    kafka_bootstrap_servers: str = Field(
        "localhost:9092", min_length=1, description="Kafka bootstrap servers, host:port[,host:port]"
    )
    kafka_extra_config: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra librdkafka settings as a JSON object, e.g. for SASL/TLS (values never logged)",
    )
    images_topic: str = Field("iot-topic", min_length=1, description="Topic of incoming images")
    predictions_topic: str = Field("iot-predictions", min_length=1, description="Topic of predictions")
    dlq_topic: str = Field("iot-dlq", min_length=1, description="Dead-letter topic")
    metrics_port: int = Field(
        8000, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz (0 = off)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level")

    def masked(self) -> dict[str, Any]:
        """Effective settings for the start-up log line; SecretStr prints as '**********'."""
        return {name: _masked(value) for name, value in self.model_dump().items()}

    def kafka_extra(self) -> dict[str, str]:
        """`kafka_extra_config` in the clear, for librdkafka only."""
        return {key: value.get_secret_value() for key, value in self.kafka_extra_config.items()}


class ConsumerSettings(ServiceSettings):
    """Settings of a service that consumes in a group and commits what it processed."""

    group_id: str = Field(min_length=1, description="Kafka consumer group")
    group_instance_id: str | None = Field(
        None,
        min_length=1,
        description="Static group membership: a restarted member with the same ID gets its partitions "
        "back at once, without a rebalance. Unique per instance; '{hostname}' is replaced",
    )
    session_timeout_ms: int = Field(
        10_000,
        ge=1_000,
        le=300_000,
        description="How long the group waits for a silent (killed) member before moving its partitions",
    )
    max_poll_interval_ms: int = Field(
        300_000, ge=1_000, description="Longest gap between two polls before the member leaves the group"
    )
    max_batch: int = Field(ge=1, le=10_000, description="Most messages in one batch")
    max_wait_ms: int = Field(
        0,
        ge=0,
        description="After a batch's first record, how long to wait for more (0 = take what has arrived: "
        "batches grow with the backlog on their own)",
    )
    commit_interval_ms: int = Field(
        1000,
        ge=0,
        description="Most time between two commits of processed offsets (0 = after every batch); a "
        "crashed service consumes at most this much again, which the pipeline merges away",
    )
    latency_target_ms: int = Field(
        50,
        ge=0,
        description="Adaptive batching: while records are younger than this, a batch holds only what the "
        "service handles within it; when they are older (a backlog), up to IOT_MAX_BATCH (0 = always up "
        "to IOT_MAX_BATCH)",
    )
    delivery_timeout_seconds: float = Field(
        30.0, gt=0, description="How long to wait for a batch's output to be acknowledged before retrying it"
    )
    startup_timeout_seconds: float = Field(
        120.0, gt=0, description="How long to wait at start for the broker, the topics (and CouchDB)"
    )

    def instance_id(self) -> str | None:
        if self.group_instance_id is None:
            return None
        return self.group_instance_id.replace("{hostname}", socket.gethostname())


class CouchSettings(ServiceSettings):
    """Settings of a service that also talks to CouchDB."""

    couchdb_url: str = Field(
        "http://localhost:5984",
        min_length=1,
        pattern=r"^\s*https?://[^,\s]+(\s*,\s*https?://[^,\s]+)*\s*$",
        description="CouchDB server URL; for a cluster, its nodes' URLs separated by commas (a node "
        "that cannot be reached is left for the next)",
    )
    couchdb_user: str = Field("admin", min_length=1, description="CouchDB user")
    couchdb_password: SecretStr = Field(SecretStr(""), description="CouchDB password (never logged)")
    couchdb_db: str = Field("img_db", min_length=1, description="Database of image documents")

    @property
    def couchdb_urls(self) -> list[str]:
        """The URLs in `couchdb_url`, without trailing slashes."""
        return node_urls(self.couchdb_url)


def node_urls(value: str) -> list[str]:
    """A CouchDB URL, or several separated by commas (a cluster's nodes), as a list."""
    return [url.strip().rstrip("/") for url in value.split(",") if url.strip()]


def load_settings(cls: type[S], argv: Sequence[str] | None = None, prog: str | None = None) -> S:
    """Build settings from env and `argv`; `--help` prints every flag and exits 0."""
    try:
        return cls(_cli_parse_args=list(argv or []), _cli_prog_name=prog)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:
        # Raised before validation, e.g. for a JSON setting that is not JSON.
        match = re.search(r'field "(\w+)"', str(exc))
        field = match.group(1) if match else "?"
        raise ConfigError(
            f"invalid settings:\n  {env_name(field)}: cannot parse the value ({exc.__cause__})"
        ) from None


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    return str(value)


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _describe(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        flag = "--" + field.replace("_", "-")
        lines.append(f"  {env_name(field)} / {flag}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)
