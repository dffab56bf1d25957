"""`iot-kafka-access`: the pipeline's Kafka users and what each may do; safe to run again.

Run as an admin principal (a super user of the brokers). Each service logs in as its own SCRAM
user and may do only what it needs, on a broker that denies whatever no ACL allows:

    iot-producer   write the images topic (idempotently)
    iot-inference  read the images topic in its group; write predictions and dead letters
    iot-sink       read images and predictions in its group; write dead letters
    iot-audit      read the three topics (it assigns partitions, never joins a group)

A user whose password already logs in is left alone; ACLs of these users that are not in this
list (a renamed group, say) are removed.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)
from pydantic import Field, SecretStr

from iot_shared.kafka import base_config
from iot_shared.service import EXIT_BAD_CONFIG, program_settings
from iot_shared.settings import ServiceSettings

log = logging.getLogger("iot_shared.access")

SCRAM_ITERATIONS = 8192  # Kafka's floor is 4096; 8192 as Kafka's own tools default to
CLUSTER = "kafka-cluster"  # the one name Kafka's cluster resource has


@dataclass(frozen=True)
class Grant:
    resource: ResourceType
    name: str
    operation: AclOperation


class AccessSettings(ServiceSettings):
    inference_group: str = Field("inference", min_length=1, description="Consumer group of inference")
    sink_group: str = Field("sink", min_length=1, description="Consumer group of the sink")
    kafka_producer_password: SecretStr = Field(
        SecretStr(""), min_length=1, description="iot-producer's password"
    )
    kafka_inference_password: SecretStr = Field(
        SecretStr(""), min_length=1, description="iot-inference's password"
    )
    kafka_sink_password: SecretStr = Field(SecretStr(""), min_length=1, description="iot-sink's password")
    kafka_audit_password: SecretStr = Field(SecretStr(""), min_length=1, description="iot-audit's password")
    timeout_seconds: float = Field(60.0, gt=0, description="How long to wait for the broker")

    def passwords(self) -> dict[str, SecretStr]:
        return {
            "iot-producer": self.kafka_producer_password,
            "iot-inference": self.kafka_inference_password,
            "iot-sink": self.kafka_sink_password,
            "iot-audit": self.kafka_audit_password,
        }


def grants(settings: AccessSettings) -> dict[str, set[Grant]]:
    """What each user may do: the least each service needs (READ and WRITE imply DESCRIBE)."""
    topic, group = ResourceType.TOPIC, ResourceType.GROUP
    read, write = AclOperation.READ, AclOperation.WRITE
    images, predictions, dlq = settings.images_topic, settings.predictions_topic, settings.dlq_topic
    return {
        "iot-producer": {
            Grant(topic, images, write),
            Grant(ResourceType.BROKER, CLUSTER, AclOperation.IDEMPOTENT_WRITE),
        },
        "iot-inference": {
            Grant(topic, images, read),
            Grant(group, settings.inference_group, read),
            Grant(topic, predictions, write),
            Grant(topic, dlq, write),
        },
        "iot-sink": {
            Grant(topic, images, read),
            Grant(topic, predictions, read),
            Grant(group, settings.sink_group, read),
            Grant(topic, dlq, write),
        },
        "iot-audit": {Grant(topic, images, read), Grant(topic, predictions, read), Grant(topic, dlq, read)},
    }


def _binding(user: str, grant: Grant) -> AclBinding:
    return AclBinding(
        grant.resource, grant.name, ResourcePatternType.LITERAL, f"User:{user}", "*",
        grant.operation, AclPermissionType.ALLOW,
    )  # fmt: skip


def _logs_in(settings: AccessSettings, user: str, password: str) -> bool:
    """Whether USER logs in with PASSWORD now: the broker answers, or refuses the login."""
    refused: list[KafkaError] = []

    def on_error(error: KafkaError) -> None:
        if error.code() == KafkaError._AUTHENTICATION:
            refused.append(error)

    login = {"sasl.username": user, "sasl.password": password, "error_cb": on_error, "log_level": 0}
    client = AdminClient(base_config(settings, "iot-access-check") | login)
    deadline = time.monotonic() + settings.timeout_seconds
    while not refused:
        try:
            client.list_topics(timeout=1.0)
            return True
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            client.poll(0)  # serves on_error
    return False


def ensure_users(admin: AdminClient, settings: AccessSettings) -> list[str]:
    """Set the SCRAM password of each user that does not log in with it yet; those changed."""
    changed = [
        user for user, password in settings.passwords().items()
        if not _logs_in(settings, user, password.get_secret_value())
    ]  # fmt: skip
    if not changed:
        return []
    info = ScramCredentialInfo(
        ScramMechanism[settings.kafka_sasl_mechanism.replace("-", "_")], SCRAM_ITERATIONS
    )
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(user, info, settings.passwords()[user].get_secret_value().encode())
        for user in changed
    ]
    for future in admin.alter_user_scram_credentials(
        upserts, request_timeout=settings.timeout_seconds
    ).values():
        future.result()
    return changed


def ensure_acls(admin: AdminClient, settings: AccessSettings) -> tuple[int, int]:
    """Make each user's ACLs exactly its grants; (created, deleted)."""
    timeout = settings.timeout_seconds
    wanted = {
        _binding(user, grant) for user, user_grants in grants(settings).items() for grant in user_grants
    }
    existing: set[AclBinding] = set()
    for user in grants(settings):
        # None matches any resource name and host (the type stubs say str).
        of_user = AclBindingFilter(
            ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{user}", None,  # type: ignore[arg-type]
            AclOperation.ANY, AclPermissionType.ANY,
        )  # fmt: skip
        existing.update(admin.describe_acls(of_user, request_timeout=timeout).result())
    missing, extra = wanted - existing, existing - wanted
    if missing:
        for future in admin.create_acls(list(missing), request_timeout=timeout).values():
            future.result()
    if extra:
        filters = [
            AclBindingFilter(
                b.restype,
                b.name,
                b.resource_pattern_type,
                b.principal,
                b.host,
                b.operation,
                b.permission_type,
            )
            for b in extra
        ]
        for future in admin.delete_acls(filters, request_timeout=timeout).values():
            future.result()
    return len(missing), len(extra)


def main(argv: Sequence[str] | None = None) -> int:
    if (settings := program_settings(AccessSettings, argv, "iot-kafka-access")) is None:
        return EXIT_BAD_CONFIG
    if settings.kafka_security_protocol != "SASL_SSL":
        sys.stderr.write("iot-kafka-access: users and ACLs need IOT_KAFKA_SECURITY_PROTOCOL=SASL_SSL\n")
        return 2
    admin = AdminClient(base_config(settings, "iot-access"))
    try:
        users = ensure_users(admin, settings)
        created, deleted = ensure_acls(admin, settings)
    except KafkaException as exc:
        log.error("could not set the users and ACLs as %s: %s", settings.kafka_username, exc.args[0].str())
        return 1
    finally:
        admin.poll(0)  # librdkafka's log lines
    log.info(
        "Kafka access ready: passwords set for %s; ACLs created %d, deleted %d",
        ", ".join(users) or "nobody", created, deleted,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
