"""The pipeline on a broker of the test's own that speaks only SASL_SSL (the local stack's
IOT_LOCAL_KAFKA_SECURITY=sasl_ssl): TLS with a private CA, a SCRAM login per service, and ACLs
(`iot-kafka-access`) that deny whatever they do not allow. Images are stored end to end, and
every client that should be refused is: no login, another CA, a wrong password, and a service's
own login used for what that service may not do."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from iot_shared.kafka import base_config, ensure_topics
from iot_shared.settings import ServiceSettings
from testbed.harness import Pipeline, Stack
from testbed.private_stack import PrivateKafka, private_kafka
from testbed.waiting import wait_for
from tests.tls import another_ca

IMAGES = 20
REFUSAL_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def kafka(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    with private_kafka(stack, tmp_path_factory.mktemp("kafka"), security="sasl_ssl") as secured:
        yield secured


def secrets(kafka: PrivateKafka, user: str) -> Path:
    return kafka.run_dir / "secrets" / user


def login_env(kafka: PrivateKafka, user: str) -> dict[str, str]:
    """A client's settings for logging in as USER: what the deployment gives each service."""
    return {
        "IOT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "IOT_KAFKA_CA_FILE": str(kafka.run_dir / "tls" / "ca.pem"),
        "IOT_KAFKA_USERNAME": user,
        "IOT_SECRETS_DIR": str(secrets(kafka, user)),
    }


def settings_as(
    kafka: PrivateKafka, user: str, pipeline: Pipeline | None = None, **changes: str
) -> ServiceSettings:
    topics = (
        {}
        if pipeline is None
        else {
            "images_topic": pipeline.images_topic,
            "predictions_topic": pipeline.predictions_topic,
            "dlq_topic": pipeline.dlq_topic,
        }
    )
    password = (secrets(kafka, user) / "iot_kafka_password").read_text()
    return ServiceSettings(
        kafka_bootstrap_servers=kafka.stack.bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_username=user,
        kafka_password=password,  # type: ignore[arg-type]  # pydantic makes it a SecretStr
        kafka_ca_file=kafka.run_dir / "tls" / "ca.pem",
        **topics,
        **changes,  # type: ignore[arg-type]
    )


def grant_access(kafka: PrivateKafka, pipeline: Pipeline) -> None:
    """`iot-kafka-access` as the admin, for this pipeline's topics and groups."""
    admin_dir = secrets(kafka, "admin")
    result = subprocess.run(
        [sys.executable, "-m", "iot_shared.access"],
        env={
            **login_env(kafka, "admin"),
            "IOT_SECRETS_DIR": str(admin_dir),
            "IOT_KAFKA_BOOTSTRAP_SERVERS": kafka.stack.bootstrap,
            "IOT_IMAGES_TOPIC": pipeline.images_topic,
            "IOT_PREDICTIONS_TOPIC": pipeline.predictions_topic,
            "IOT_DLQ_TOPIC": pipeline.dlq_topic,
            "IOT_INFERENCE_GROUP": f"{pipeline.name}-inference",
            "IOT_SINK_GROUP": f"{pipeline.name}-sink",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def secured(kafka: PrivateKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    pipeline = Pipeline(kafka.stack, tmp_path_factory.mktemp("logs"))
    topics = {pipeline.images_topic: 3, pipeline.predictions_topic: 3, pipeline.dlq_topic: 1}
    ensure_topics(settings_as(kafka, "admin", pipeline), topics)
    grant_access(kafka, pipeline)
    pipeline.create_database()
    try:
        yield pipeline
    finally:
        pipeline.close()


def start_as(kafka: PrivateKafka, pipeline: Pipeline, role: str, **extra: str) -> None:
    pipeline.start(role, **login_env(kafka, f"iot-{role}"), **extra)


def refused(config: dict[str, object]) -> set[int]:
    """The error codes with which the brokers turn a client of CONFIG away at connection."""
    errors: set[int] = set()
    client = AdminClient(config | {"error_cb": lambda e: errors.add(e.code()), "log_level": 0})

    def turned_away() -> set[int] | None:
        try:
            client.list_topics(timeout=1)
        except KafkaException:
            client.poll(0)
            return errors or None
        raise AssertionError("the brokers answered a client they should refuse")

    return wait_for("the brokers to refuse the client", turned_away, REFUSAL_TIMEOUT_S)


def denied(kafka: PrivateKafka, user: str, pipeline: Pipeline) -> dict[str, object]:
    return base_config(settings_as(kafka, user, pipeline), f"test-{user}") | {"log_level": 0}


def first_error(consumer: Consumer, besides: int | None = None) -> KafkaError:
    """The first error a consumer meets, other than BESIDES; a record fails the test."""

    def error() -> KafkaError | None:
        msg = consumer.poll(1)
        if msg is None:
            return None
        found = msg.error()
        assert found is not None, "a record was read"
        return None if found.code() == besides else found

    return wait_for("the consumer's error", error, REFUSAL_TIMEOUT_S)


def test_images_are_stored_end_to_end_over_sasl_ssl(kafka: PrivateKafka, secured: Pipeline) -> None:
    start_as(kafka, secured, "inference")
    start_as(kafka, secured, "sink")
    producer = secured.start(
        "producer", IOT_COUNT=str(IMAGES), IOT_RATE="0", **login_env(kafka, "iot-producer")
    )
    assert producer.wait(600) == 0, producer.log_tail()
    docs = secured.wait_for_complete(IMAGES, timeout=300)
    assert len(docs) == IMAGES


def test_a_client_without_a_login_is_refused(kafka: PrivateKafka) -> None:
    codes = refused({"bootstrap.servers": kafka.stack.bootstrap, "security.protocol": "PLAINTEXT"})
    assert codes & {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}, codes


def test_a_client_trusting_another_ca_is_refused(
    kafka: PrivateKafka, secured: Pipeline, tmp_path: Path
) -> None:
    config = denied(kafka, "iot-sink", secured) | {"ssl.ca.location": str(another_ca(tmp_path))}
    assert KafkaError._SSL in refused(config)


def test_a_wrong_password_is_refused(kafka: PrivateKafka, secured: Pipeline) -> None:
    config = denied(kafka, "iot-sink", secured) | {"sasl.password": "not-the-password"}
    assert KafkaError._AUTHENTICATION in refused(config)


def test_the_producer_may_not_read_images(kafka: PrivateKafka, secured: Pipeline) -> None:
    consumer = Consumer(denied(kafka, "iot-producer", secured) | {"group.id": f"{secured.name}-x"})
    try:
        consumer.assign([TopicPartition(secured.images_topic, 0, 0)])
        # Reading by assignment needs no group; librdkafka's ask for the group's offsets may be
        # refused first.
        error = first_error(consumer, besides=KafkaError.GROUP_AUTHORIZATION_FAILED)
        assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    finally:
        consumer.close()


def test_the_producer_may_not_forge_a_prediction(kafka: PrivateKafka, secured: Pipeline) -> None:
    outcomes: list[KafkaError | None] = []
    producer = Producer(denied(kafka, "iot-producer", secured))
    producer.produce(secured.predictions_topic, b"{}", on_delivery=lambda err, _msg: outcomes.append(err))
    producer.flush(REFUSAL_TIMEOUT_S)
    assert len(outcomes) == 1 and outcomes[0] is not None
    assert outcomes[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_the_producer_may_not_join_the_sinks_group(kafka: PrivateKafka, secured: Pipeline) -> None:
    consumer = Consumer(denied(kafka, "iot-producer", secured) | {"group.id": f"{secured.name}-sink"})
    try:
        consumer.subscribe([secured.images_topic])
        assert first_error(consumer).code() in {
            KafkaError.GROUP_AUTHORIZATION_FAILED,
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
        }
    finally:
        consumer.close()


def test_inference_may_not_delete_a_topic(kafka: PrivateKafka, secured: Pipeline) -> None:
    admin = AdminClient(denied(kafka, "iot-inference", secured))
    future = admin.delete_topics([secured.images_topic], operation_timeout=30)[secured.images_topic]
    with pytest.raises(KafkaException) as refusal:
        future.result(timeout=REFUSAL_TIMEOUT_S)
    assert refusal.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert secured.images_topic in AdminClient(denied(kafka, "admin", secured)).list_topics(timeout=30).topics


def test_a_rotated_password_takes_over_from_the_old_one(kafka: PrivateKafka, secured: Pipeline) -> None:
    old = denied(kafka, "iot-audit", secured)
    password = secrets(kafka, "iot-audit") / "iot_kafka_password"
    password.chmod(0o600)
    password.write_text("rotated-audit-password")
    admin_copy = secrets(kafka, "admin") / "iot_kafka_audit_password"
    admin_copy.chmod(0o600)
    admin_copy.write_text("rotated-audit-password")
    grant_access(kafka, secured)
    assert KafkaError._AUTHENTICATION in refused(old)
    AdminClient(denied(kafka, "iot-audit", secured)).list_topics(timeout=30)
