"""What SASL_SSL costs on the Kafka path: `python -m benchmarks.kafka_security [--messages N]`.

Two private brokers of the local stack side by side, one PLAINTEXT, one SASL_SSL (TLS with the
run dir's CA, SCRAM-SHA-512 logins, ACLs: IOT_LOCAL_KAFKA_SECURITY=sasl_ssl). On each, in turn
and for several rounds, the pipeline's clients (iot_shared.kafka.base_config) send N image-sized
records (acks=all, idempotent, as the producer does) and read them back. The report gives the
medians and the SASL_SSL/PLAINTEXT ratio of each: the machine is shared, so only the ratio of
runs interleaved in one process means anything. `make bench` runs it after the pipeline's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from iot_shared.kafka import base_config, ensure_topics
from iot_shared.settings import ServiceSettings
from testbed.harness import Stack
from testbed.private_stack import PrivateKafka, running

RECORD_BYTES = 2_600  # a CIFAR-10 PNG with its JSON envelope, about
PARTITIONS = 3


def settings(kafka: PrivateKafka, secure: bool) -> ServiceSettings:
    if not secure:
        return ServiceSettings(kafka_bootstrap_servers=kafka.stack.bootstrap)
    return ServiceSettings(
        kafka_bootstrap_servers=kafka.stack.bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_username="admin",
        kafka_password=(kafka.run_dir / "secrets" / "admin" / "iot_kafka_password").read_text(),
        kafka_ca_file=kafka.run_dir / "tls" / "ca.pem",
    )


def produce(config: dict[str, Any], topic: str, count: int) -> float:
    """Seconds to have COUNT records acknowledged by every in-sync replica."""
    producer = Producer({**config, "enable.idempotence": True, "linger.ms": 5})
    value = os.urandom(RECORD_BYTES)
    start = time.perf_counter()
    for _ in range(count):
        while True:
            try:
                producer.produce(topic, value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("records left unacknowledged")
    return time.perf_counter() - start


def consume(config: dict[str, Any], topic: str, count: int) -> float:
    """Seconds to read COUNT records from the start of TOPIC in a new group."""
    consumer = Consumer(
        {**config, "group.id": f"bench-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    seen, start = 0, time.perf_counter()
    try:
        while seen < count:
            for msg in consumer.consume(1000, 1.0):
                if not msg.error():
                    seen += 1
            if time.perf_counter() - start > 300:
                raise RuntimeError(f"read {seen} of {count} in 300 s")
        return time.perf_counter() - start
    finally:
        consumer.close()


def measure(kafka: PrivateKafka, secure: bool, count: int) -> tuple[float, float]:
    """Records per second sent, and read, on a fresh topic."""
    base = settings(kafka, secure)
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topics(base, {topic: PARTITIONS})
    config = base_config(base, "bench")
    return count / produce(config, topic, count), count / consume(config, topic, count)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kafka_security", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000, help="records per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    unused = Stack("", "", "", "")  # the private brokers need nothing of the shared stack
    rates: dict[str, list[tuple[float, float]]] = {"PLAINTEXT": [], "SASL_SSL": []}
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as run_dir:
        plain = PrivateKafka(unused, Path(run_dir) / "plaintext")
        secure = PrivateKafka(unused, Path(run_dir) / "sasl_ssl", security="sasl_ssl")
        with running(plain), running(secure):
            for round_ in range(args.rounds):
                for name, kafka in (("PLAINTEXT", plain), ("SASL_SSL", secure)):
                    rates[name].append(measure(kafka, name == "SASL_SSL", args.messages))
                    sent, read = rates[name][-1]
                    print(f"round {round_ + 1} {name:9}: sent {sent:6.0f}/s, read {read:6.0f}/s", flush=True)
    median = {
        name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        for name, runs in rates.items()
    }
    result = {
        "messages": args.messages,
        "record_bytes": RECORD_BYTES,
        "rounds": args.rounds,
        "records_per_second": {name: {"sent": m[0], "read": m[1]} for name, m in median.items()},
        "sasl_ssl_to_plaintext": {
            "sent": median["SASL_SSL"][0] / median["PLAINTEXT"][0],
            "read": median["SASL_SSL"][1] / median["PLAINTEXT"][1],
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kafka_security.json").write_text(json.dumps(result, indent=2) + "\n")
    ratio = result["sasl_ssl_to_plaintext"]
    medians = f"medians of {args.rounds}"
    print(f"SASL_SSL / PLAINTEXT ({medians}): sent {ratio['sent']:.2f}, read {ratio['read']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
