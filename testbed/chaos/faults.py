"""What the chaos run does to the pipeline: the fault plan, and the malformed messages it sends.

A plan is a list of steps run one after another. Each step waits for its precondition (the victim
is busy: it holds partitions and is consuming), fires, and waits until the victim serves again.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from iot_shared.schema import ImageMessage, PredictionMessage

StepKind = Literal[
    "kill",
    "sigterm",
    "broker_kill",
    "leader_kill",
    "broker_wipe",
    "rolling_restart",
    "couch_outage",
    "couch_node_kill",
    "malformed",
    "near_limit",
]
# The faults that take a broker down: the producer must be delivering again soon after each.
BROKER_FAULTS = ("broker_kill", "leader_kill", "broker_wipe", "rolling_restart")
Role = Literal["inference", "sink", "producer"]

# The broker's (and librdkafka's) default limit is 1,000,000 bytes per message; this one fits
# just under it, and its dead-letter copy, with headers added, does not.
NEAR_LIMIT_BYTES = 999_850


@dataclass(frozen=True)
class Step:
    kind: StepKind
    role: Role | None = None  # the victim's role, for kill and sigterm
    seconds: float = 0.0  # how long the outage lasts, for couch_outage

    @property
    def label(self) -> str:
        if self.kind in ("kill", "sigterm"):
            return f"{'kill -9' if self.kind == 'kill' else 'SIGTERM'} {self.role}"
        if self.kind == "couch_outage":
            return f"CouchDB down {self.seconds:.0f}s"
        return {
            "broker_kill": "kill -9 broker",
            "leader_kill": "kill -9 leader broker",
            "broker_wipe": "broker restarted with its data wiped",
            "rolling_restart": "rolling restart of every broker",
            "couch_node_kill": "kill -9 CouchDB node",
            "malformed": "malformed messages",
            "near_limit": f"{NEAR_LIMIT_BYTES:,}-byte message",
        }[self.kind]


def broker_faults(kafka_brokers: int) -> tuple[list[Step], list[Step]]:
    """One broker: it is killed and restarted, twice. A cluster: first the broker that leads the
    images topic is killed, then a broker loses its data, and every broker is restarted in turn."""
    if kafka_brokers == 1:
        return [Step("broker_kill")], [Step("broker_kill")]
    return [Step("leader_kill")], [Step("broker_wipe"), Step("rolling_restart")]


def full_plan(
    couch_outage_seconds: float = 30.0, couchdb_nodes: int = 1, kafka_brokers: int = 1
) -> list[Step]:
    """`make chaos`: 5 kills of each consumer, a SIGTERM of each service, the broker faults, a
    CouchDB outage, a producer kill, and every malformed message, spread through the run; on a
    CouchDB cluster also 2 kills of the node the sinks write to.
    The near-limit message comes late: a consumer that crash-loops on it stops the run's other
    faults from proving anything, so they go first."""
    kill_inference, kill_sink = Step("kill", "inference"), Step("kill", "sink")
    node_kill = [Step("couch_node_kill")] if couchdb_nodes > 1 else []
    early, late = broker_faults(kafka_brokers)
    return [
        Step("malformed"),
        kill_inference,
        kill_sink,
        *early,
        kill_inference,
        kill_sink,
        Step("sigterm", "inference"),
        Step("sigterm", "sink"),
        Step("couch_outage", seconds=couch_outage_seconds),
        *node_kill,
        kill_inference,
        kill_sink,
        Step("sigterm", "producer"),
        kill_inference,
        kill_sink,
        *node_kill,
        *late,
        kill_inference,
        kill_sink,
        Step("near_limit"),
        Step("kill", "producer"),
    ]


def small_plan(
    couch_outage_seconds: float = 10.0, couchdb_nodes: int = 1, kafka_brokers: int = 1
) -> list[Step]:
    """`make test`: one of each kind of fault, a short outage."""
    node_kill = [Step("couch_node_kill")] if couchdb_nodes > 1 else []
    early, late = broker_faults(kafka_brokers)
    return [
        Step("malformed"),
        Step("kill", "inference"),
        Step("kill", "sink"),
        Step("sigterm", "inference"),
        Step("sigterm", "sink"),
        *early,
        *(late if kafka_brokers > 1 else []),
        Step("couch_outage", seconds=couch_outage_seconds),
        *node_kill,
        Step("near_limit"),
        Step("kill", "producer"),
    ]


PLANS = {"full": full_plan, "small": small_plan}


@dataclass(frozen=True)
class Malformed:
    """A message that breaks the contract, and the dead-letter reasons that are right for it."""

    name: str
    topic: Literal["images", "predictions"]
    value: bytes
    reasons: frozenset[str] = field(default_factory=frozenset)


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A small 32x32 PNG whose header (IHDR) claims another size: a decompression bomb's disguise."""
    png = bytearray(_png((32, 32)))
    # Signature (8), IHDR length (4) and type (4), then width and height; the chunk's CRC after 13 bytes.
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _image(**overrides: object) -> dict[str, object]:
    msg = ImageMessage.from_pixels(str(uuid.uuid4()), "cat", np.zeros((32, 32, 3), np.uint8), 1.0, "chaos")
    return {**json.loads(msg.encode()), **overrides}


def _json(obj: dict[str, object]) -> bytes:
    return json.dumps(obj).encode()


def malformed_messages() -> list[Malformed]:
    """Every kind the contract refuses, and the inputs that once crashed the consumers."""
    prediction = json.loads(PredictionMessage(str(uuid.uuid4()), "cat", 0.5, 1.0).encode())
    nan_image = _json(_image(ProducedAt=0.0)).replace(b'"ProducedAt": 0.0', b'"ProducedAt": NaN')
    assert b"NaN" in nan_image
    return [
        Malformed("not JSON", "images", b"this is not json", frozenset({"not_json"})),
        Malformed("empty", "images", b"", frozenset({"not_json"})),
        Malformed("missing field", "images", _json(_image(GroundTruth=None)), frozenset({"missing_field"})),
        Malformed("bad base64", "images", _json(_image(Data="***")), frozenset({"bad_base64"})),
        Malformed(
            "bad image (64x64)",
            "images",
            _json(_image(Data=base64.b64encode(_png((64, 64))).decode())),
            frozenset({"bad_image"}),
        ),
        Malformed(
            "unknown class", "images", _json(_image(GroundTruth="unicorn")), frozenset({"unknown_class"})
        ),
        Malformed(
            "ProducedAt of 400 digits",
            "images",
            _json(_image(ProducedAt=10**400)),
            frozenset({"invalid_field"}),
        ),
        Malformed(
            "JSON nested 200,000 deep",
            "images",
            b'{"ID": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
            # Over a size limit, where the contract has one, before it is parsed at all.
            frozenset({"not_json", "too_large"}),
        ),
        Malformed("NaN ProducedAt", "images", nan_image, frozenset({"not_json", "invalid_field"})),
        Malformed(
            "PNG declaring 20000x20000",
            "images",
            _json(_image(Data=base64.b64encode(_png_declaring(20000, 20000)).decode())),
            frozenset({"bad_image"}),
        ),
        Malformed(
            "prediction with Confidence 'very'",
            "predictions",
            _json({**prediction, "Confidence": "very"}),
            frozenset({"invalid_field"}),
        ),
    ]


def near_limit_message() -> Malformed:
    """An image message of exactly NEAR_LIMIT_BYTES whose Data is valid base64 of random bytes."""
    fields = _image(Data="", Source="chaos")
    room = NEAR_LIMIT_BYTES - len(_json(fields))
    data_chars = room // 4 * 4  # base64 comes in groups of 4 characters
    data = base64.b64encode(os.urandom(data_chars // 4 * 3)).decode()
    value = _json({**fields, "Data": data, "Source": "chaos" + "-" * (room - data_chars)})
    assert len(value) == NEAR_LIMIT_BYTES
    # Over the contract's size limit where it has one; otherwise not a PNG.
    return Malformed(f"{len(value):,}-byte image", "images", value, frozenset({"too_large", "bad_image"}))
