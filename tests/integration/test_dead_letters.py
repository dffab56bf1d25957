"""Messages that break the contract go to the dead-letter topic; the pipeline keeps going."""

from __future__ import annotations

import base64
import io
import json
import uuid

import numpy as np
from PIL import Image

from iot_shared.errors import DLQ_REASONS
from iot_shared.schema import ImageMessage, PredictionMessage
from testbed.harness import Pipeline


def _png(size: tuple[int, int], mode: str = "RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _image(**overrides: object) -> bytes:
    msg = ImageMessage.from_pixels(str(uuid.uuid4()), "cat", np.zeros((32, 32, 3), np.uint8), 1.0, "t")
    obj = json.loads(msg.encode())
    obj.update(overrides)
    return json.dumps(obj).encode()


BAD_IMAGES = {
    "not_json": b"this is not json",
    "missing_field": _image(GroundTruth=None),
    "invalid_field": _image(ID="../../_all_docs"),
    "bad_base64": _image(Data="***"),
    "bad_image": _image(Data=_png((64, 64))),
    "unknown_class": _image(GroundTruth="unicorn"),
    "too_large": _image(Source="x" * 70_000),
}
# `undecodable` cannot be sent on purpose: it names a failure nobody foresaw (unit-tested in the loop).
UNFORESEEN = {"undecodable"}


def headers(msg) -> dict[str, str]:
    return {k: v.decode() for k, v in (msg.headers() or [])}


def test_each_kind_of_bad_message_is_dead_lettered_and_good_ones_still_flow(pipeline: Pipeline) -> None:
    assert set(BAD_IMAGES) == set(DLQ_REASONS) - UNFORESEEN
    pipeline.start("inference")
    pipeline.start("sink")
    pipeline.send_raw(pipeline.images_topic, list(BAD_IMAGES.values()))
    bad_prediction = json.loads(PredictionMessage(str(uuid.uuid4()), "cat", 0.5, 1.0).encode())
    bad_prediction["Confidence"] = "very"
    pipeline.send_raw(pipeline.predictions_topic, [json.dumps(bad_prediction).encode()])
    pipeline.produce(5)

    pipeline.wait_for_complete(5, timeout=120)
    # Inference and sink both read the images topic, so each dead-letters every bad image.
    dead = pipeline.read_topic(pipeline.dlq_topic, 2 * len(BAD_IMAGES) + 1)
    by_service: dict[str, list[dict[str, str]]] = {}
    for msg in dead:
        by_service.setdefault(headers(msg)["dlq.service"], []).append(headers(msg))
    for service in ("inference", "sink"):
        images = [h for h in by_service[service] if h["dlq.source.topic"] == pipeline.images_topic]
        assert sorted(h["dlq.reason"] for h in images) == sorted(BAD_IMAGES)
        assert all(h["dlq.source.partition"].isdigit() and h["dlq.source.offset"].isdigit() for h in images)
    [bad_pred] = [h for h in by_service["sink"] if h["dlq.source.topic"] == pipeline.predictions_topic]
    assert bad_pred["dlq.reason"] == "invalid_field"
    # The payload is kept as it was, for whoever repairs and replays it.
    assert {m.value() for m in dead} >= set(BAD_IMAGES.values())
    assert len(pipeline.documents()) == 5


def test_crafted_messages_that_once_crashed_the_consumers_are_dead_lettered(pipeline: Pipeline) -> None:
    """A 400-digit timestamp, deeply nested JSON, a NaN timestamp, a PNG header claiming 10000x10000
    pixels and a record just under the broker's 1 MB limit each stopped inference and sink at every
    restart (OverflowError, RecursionError, DecompressionBombError, a dead-letter copy too large to
    send); now they are contract errors and the pipeline goes on."""
    buf = io.BytesIO()
    Image.new("1", (10000, 10000)).save(buf, format="PNG")
    near_limit = _image(Source="x" * 999_000)
    near_limit = near_limit[:-2] + b" " * (999_850 - len(near_limit)) + near_limit[-2:]
    crafted = [
        ("invalid_field", _image(ProducedAt=10**400)),
        ("not_json", b'{"ID": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"),
        ("too_large", b'{"ID": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
        ("not_json", _image(ProducedAt=float("nan"))),
        ("bad_image", _image(Data=base64.b64encode(buf.getvalue()).decode())),
        ("too_large", near_limit),
    ]
    pipeline.start("inference")
    pipeline.start("sink")
    pipeline.send_raw(pipeline.images_topic, [payload for _, payload in crafted])
    pipeline.produce(5)

    pipeline.wait_for_complete(5, timeout=120)
    dead = pipeline.read_topic(pipeline.dlq_topic, 2 * len(crafted))
    for service in ("inference", "sink"):
        mine = [m for m in dead if headers(m)["dlq.service"] == service]
        assert sorted(headers(m)["dlq.reason"] for m in mine) == sorted(reason for reason, _ in crafted)
        # The copy of the near-1 MB record fits: its head is kept, and a header says how long it was.
        [copy] = [m for m in mine if "dlq.truncated.from" in headers(m)]
        assert headers(copy)["dlq.truncated.from"] == "999850"
        assert near_limit.startswith(copy.value())
    assert len(pipeline.documents()) == 5
