"""Typed settings shared by every service: environment variables prefixed `IOT_`, CLI flags override.

Each service subclasses `ServiceSettings` in its own `settings.py`; `load_settings` builds it
inside `main()` and turns a validation error into a `ConfigError` that names the variable.

Secrets may also come from files, one per setting, in `IOT_SECRETS_DIR` (default `/run/secrets`,
where Compose and the Ansible units mount them): the file `iot_kafka_password` holds
`IOT_KAFKA_PASSWORD`. A file keeps the secret out of `docker inspect` and `/proc/*/environ`.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, FilePath, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from iot_shared.errors import ConfigError

ENV_PREFIX = "IOT_"
SECRETS_DIR = "/run/secrets"

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
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, or SASL_SSL: TLS to the brokers and a SASL login"
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism, with SASL_SSL"
    )
    kafka_username: str | None = Field(None, min_length=1, description="SASL user, with SASL_SSL")
    kafka_password: SecretStr = Field(
        SecretStr(""), description="SASL password, with SASL_SSL; best from the secrets dir (never logged)"
    )
    kafka_ca_file: FilePath | None = Field(
        None, description="PEM file of the CA that signed the brokers' certificates (unset: the system's)"
    )
    kafka_extra_config: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra librdkafka settings as a JSON object, over the above (values never logged)",
    )
    images_topic: str = Field("iot-topic", min_length=1, description="Topic of incoming images")
    predictions_topic: str = Field("iot-predictions", min_length=1, description="Topic of predictions")
    dlq_topic: str = Field("iot-dlq", min_length=1, description="Dead-letter topic")
    metrics_port: int = Field(
        8000, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz (0 = off)"
    )
    metrics_address: str = Field(
        "0.0.0.0",  # noqa: S104  # every interface, so Compose's other containers reach it
        min_length=1,
        description="Address /metrics, /healthz, /readyz listen on (0.0.0.0 = every interface)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level")

    @model_validator(mode="after")
    def _sasl_login_is_complete(self) -> ServiceSettings:
        if self.kafka_security_protocol == "SASL_SSL" and not (
            self.kafka_username and self.kafka_password.get_secret_value()
        ):
            raise ValueError(
                "IOT_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs IOT_KAFKA_USERNAME and IOT_KAFKA_PASSWORD "
                f"(or the file iot_kafka_password in IOT_SECRETS_DIR, {secrets_dir()})"
            )
        return self

    def masked(self) -> dict[str, Any]:
        """Effective settings for the start-up log line; SecretStr prints as '**********'."""
        return {name: _masked(value) for name, value in self.model_dump().items()}

    def kafka_extra(self) -> dict[str, str]:
        """`kafka_extra_config` in the clear, for librdkafka only."""
        return {key: value.get_secret_value() for key, value in self.kafka_extra_config.items()}


class LoopSettings(ServiceSettings):
    """Settings of a service whose main loop runs until it is stopped (the producer, inference,
    the sink): /healthz watches that loop (`iot_shared.heartbeat`)."""

    # Must be well above the longest gap between two beats that no setting bounds (flushes are
    # announced with their timeouts, the producer's interval beats every second). The longest is
    # the sink's: a CouchDB request that reaches no node fails only after the client's 30 s
    # time-out on each node in turn (90 s on a 3-node cluster), maybe after answered requests of
    # the same write or sweep. A Kafka poll blocks 0.5 s at most, a forward pass of IOT_MAX_BATCH
    # images takes well under a second at 64. 300 s leaves a 3-node cluster's outage room to
    # spare (120 s would not: a restart during an outage is what this must never cause), and is
    # what librdkafka waits by default before it takes a consumer that stopped polling for dead
    # (IOT_MAX_POLL_INTERVAL_MS): a hang is caught within minutes instead of never.
    stall_timeout_seconds: float = Field(
        300.0,
        gt=0,
        allow_inf_nan=False,
        description="/healthz answers 503 once the main loop has not gone round for this long "
        "(a hang, not an outage: the loop keeps going round while Kafka or CouchDB is down)",
    )


class ConsumerSettings(LoopSettings):
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
    couchdb_ca_file: FilePath | None = Field(
        None,
        description="PEM file of the CA that signed CouchDB's certificate, with https (unset: the system's)",
    )

    @property
    def couchdb_urls(self) -> list[str]:
        """The URLs in `couchdb_url`, without trailing slashes."""
        return node_urls(self.couchdb_url)


def node_urls(value: str) -> list[str]:
    """A CouchDB URL, or several separated by commas (a cluster's nodes), as a list."""
    return [url.strip().rstrip("/") for url in value.split(",") if url.strip()]


def load_settings(cls: type[S], argv: Sequence[str] | None = None, prog: str | None = None) -> S:
    """Build settings from env and `argv`; `--help` prints every flag and exits 0."""
    folder = Path(secrets_dir())
    try:
        return cls(
            _cli_parse_args=list(argv or []),
            _cli_prog_name=prog,
            _secrets_dir=folder if folder.is_dir() else None,
        )
    except ValidationError as exc:
        raise ConfigError(_describe(cls, exc)) from None
    except SettingsError as exc:
        # Raised before validation, e.g. for a JSON setting that is not JSON.
        match = re.search(r'field "(\w+)"', str(exc))
        field = match.group(1) if match else "?"
        raise ConfigError(
            f"invalid settings:\n  {env_name(field)}: cannot parse the value ({exc.__cause__})"
        ) from None


def secrets_dir() -> str:
    return os.environ.get(f"{ENV_PREFIX}SECRETS_DIR", SECRETS_DIR)


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    return str(value)


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _describe(cls: type[ServiceSettings], exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors():
        if not err["loc"]:  # a check across settings: its message names them
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
            continue
        field = str(err["loc"][0])
        flag = "--" + field.replace("_", "-")
        # A secret's value is never echoed: the error goes to a journal that restarts repeat.
        got = "its value not shown" if _is_secret(cls, field) else f"got {err.get('input')!r}"
        lines.append(f"  {env_name(field)} / {flag}: {err['msg']} ({got})")
    return "\n".join(lines)


def _is_secret(cls: type[ServiceSettings], field: str) -> bool:
    info = cls.model_fields.get(field)
    return info is None or "SecretStr" in str(info.annotation)
