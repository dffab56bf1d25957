from __future__ import annotations

import base64
import io
import json
import uuid

import numpy as np
import pytest
from PIL import Image

from iot_shared.errors import DLQ_REASONS, InvalidMessageError
from iot_shared.schema import CLASSES, ImageMessage, PredictionMessage, png_to_pixels

PIXELS = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def image(**overrides: object) -> bytes:
    msg = ImageMessage.from_pixels(str(uuid.uuid4()), "cat", PIXELS, 1700000000.5, "cam-1")
    obj = json.loads(msg.encode())
    obj.update(overrides)
    return json.dumps(obj).encode()


def png_of(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def test_image_message_round_trips_pixels_exactly() -> None:
    msg = ImageMessage.from_pixels(str(uuid.uuid4()), "ship", PIXELS, 1.5, "cam")
    decoded = ImageMessage.decode(msg.encode())
    assert decoded == msg
    np.testing.assert_array_equal(decoded.pixels, PIXELS)
    assert set(json.loads(msg.encode())) == {"ID", "GroundTruth", "Data", "ProducedAt", "Source"}


def test_prediction_message_round_trips() -> None:
    msg = PredictionMessage(str(uuid.uuid4()), "frog", 0.93, 1700000001.0)
    assert PredictionMessage.decode(msg.encode()) == msg
    obj = json.loads(msg.encode())
    assert obj["Model"] == "cifar10_resnet20"
    assert set(obj) == {"ID", "InferredValue", "Confidence", "Model", "InferredAt"}


def png_bomb() -> str:
    """A small PNG whose header declares 20000x20000 pixels (PIL's decompression bomb)."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def deeply_nested(depth: int) -> bytes:
    return b'{"ID": ' + b"[" * depth + b"]" * depth + b"}"


# Each of these once escaped decode as something else (OverflowError, RecursionError, PIL's
# DecompressionBombError) or passed it (NaN), and stopped a service on every restart.
CRASH_INPUTS = {
    "not_json": [
        deeply_nested(200_000),
        image().replace(b'"ProducedAt": 1700000000.5', b'"ProducedAt": NaN'),
        image().replace(b'"ProducedAt": 1700000000.5', b'"ProducedAt": -Infinity'),
    ],
    "invalid_field": [image(ProducedAt=10**400)],
    "bad_image": [image(Data=png_bomb())],
}

BAD_IMAGES = {
    "not_json": [b"\xff\xfe not json", b"", b"[1, 2]", None],
    "missing_field": [image(GroundTruth=None), json.dumps({"ID": str(uuid.uuid4())}).encode()],
    "invalid_field": [image(ID="not-a-uuid"), image(ProducedAt="yesterday"), image(ProducedAt=True)],
    "bad_base64": [image(Data="%%% not base64 %%%")],
    "bad_image": [
        image(Data=base64.b64encode(b"just bytes").decode()),
        image(Data=png_of(Image.new("RGB", (64, 64)))),
        image(Data=png_of(Image.new("L", (32, 32)))),
        image(Data=png_of(Image.new("RGB", (32, 32)), "JPEG")),
    ],
    "unknown_class": [image(GroundTruth="unicorn")],
}


@pytest.mark.parametrize(
    ("reason", "raw"), [(reason, raw) for reason, raws in BAD_IMAGES.items() for raw in raws]
)
def test_each_contract_violation_has_its_reason(reason: str, raw: bytes | None) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        ImageMessage.decode(raw)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("reason", "raw"), [(reason, raw) for reason, raws in CRASH_INPUTS.items() for raw in raws]
)
def test_crafted_inputs_are_contract_errors_not_crashes(reason: str, raw: bytes) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        ImageMessage.decode(raw)
    assert caught.value.reason == reason


def test_every_dlq_reason_is_exercised() -> None:
    assert set(BAD_IMAGES) == set(DLQ_REASONS)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"InferredValue": "dragon"}, "unknown_class"),
        ({"Confidence": 1.5}, "invalid_field"),
        ({"Confidence": None}, "missing_field"),
    ],
)
def test_bad_predictions_are_rejected(overrides: dict[str, object], reason: str) -> None:
    obj = json.loads(PredictionMessage(str(uuid.uuid4()), "cat", 0.5, 1.0).encode())
    obj.update(overrides)
    with pytest.raises(InvalidMessageError) as caught:
        PredictionMessage.decode(json.dumps(obj).encode())
    assert caught.value.reason == reason


def test_classes_are_cifar10_in_label_order() -> None:
    assert CLASSES[0] == "airplane" and CLASSES[3] == "cat" and CLASSES[9] == "truck"


def test_png_to_pixels_rejects_truncated_png() -> None:
    png = base64.b64decode(png_of(Image.new("RGB", (32, 32))))
    with pytest.raises(InvalidMessageError, match="bad_image"):
        png_to_pixels(png[: len(png) // 2])
