"""Which clients a deployed SASL_SSL broker turns away, asked from a pipeline VM.

Runs inside a pipeline image (it has confluent-kafka), on the VM, with the deployment's CA at
/etc/iot/tls/ca.pem:

    python - BOOTSTRAP OTHER_CA PRODUCER_PASSWORD INFERENCE_PASSWORD < kafka_refusals.py

and prints a JSON object: for each attempt, the name of the error it met ("allowed" if none).
Standalone on purpose: the image has no tests package.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

CA = "/etc/iot/tls/ca.pem"
TIMEOUT_S = 60


def login(bootstrap: str, user: str, password: str, **more: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": password,
        "ssl.ca.location": CA,
        "log_level": 0,
        **more,
    }


def connection_error(config: dict[str, Any]) -> str:
    """The first error a client of CONFIG meets connecting, or "allowed"."""
    errors: list[KafkaError] = []
    watched: dict[str, Any] = {**config, "error_cb": errors.append, "log_level": 0}
    client = AdminClient(watched)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            client.list_topics(timeout=1)
            return "allowed"
        except KafkaException:
            client.poll(0)
            if errors:
                return errors[0].name()
    return "timed out"


def consumer_error(config: dict[str, Any], subscribe: str | None = None, assign: str | None = None) -> str:
    """The first error a consumer meets (a record: "allowed"). Reading by assignment needs no
    group, so the group's own refusal (librdkafka asks for its offsets) is not the answer."""
    consumer = Consumer(config)
    try:
        if subscribe:
            consumer.subscribe([subscribe])
        if assign:
            consumer.assign([TopicPartition(assign, 0, 0)])
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is None:
                continue
            error = msg.error()
            if error is None:
                return "allowed"
            if not (assign and error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED):
                return str(error.name())
        return "timed out"
    finally:
        consumer.close()


def produce_error(config: dict[str, Any], topic: str) -> str:
    outcome: list[KafkaError | None] = []
    producer = Producer(config)
    producer.produce(topic, b"{}", on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(TIMEOUT_S)
    if not outcome:
        return "timed out"
    return outcome[0].name() if outcome[0] else "allowed"


def delete_error(config: dict[str, Any], topic: str) -> str:
    admin = AdminClient(config)  # kept: a client collected while waiting fails its futures
    future = admin.delete_topics([topic], operation_timeout=30)[topic]
    try:
        future.result(timeout=TIMEOUT_S)
    except KafkaException as exc:
        return str(exc.args[0].name())
    return "allowed"


def main(bootstrap: str, other_ca: str, producer_password: str, inference_password: str) -> dict[str, str]:
    producer = login(bootstrap, "iot-producer", producer_password)
    inference = login(bootstrap, "iot-inference", inference_password)
    return {
        "plaintext": connection_error({"bootstrap.servers": bootstrap, "security.protocol": "PLAINTEXT"}),
        "another CA": connection_error({**producer, "ssl.ca.location": other_ca}),
        "wrong password": connection_error({**producer, "sasl.password": "not-the-password"}),
        "producer logs in": connection_error(producer),
        "producer reads iot-topic": consumer_error({**producer, "group.id": "iot-e2e-x"}, assign="iot-topic"),
        "producer writes iot-predictions": produce_error(producer, "iot-predictions"),
        "producer joins group sink": consumer_error({**producer, "group.id": "sink"}, subscribe="iot-topic"),
        "inference deletes iot-topic": delete_error(inference, "iot-topic"),
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))
