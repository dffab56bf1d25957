from __future__ import annotations

import base64
import io
import json
import struct
import uuid
import zlib

import numpy as np
import pytest
from PIL import Image

from iot_shared.errors import DLQ_REASONS, InvalidMessageError
from iot_shared.schema import (
    CLASSES,
    MAX_DATA_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_NAME_CHARS,
    ImageMessage,
    ImageWire,
    PredictionMessage,
    PredictionWire,
)

PIXELS = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def image(**overrides: object) -> bytes:
    msg = ImageMessage.from_pixels(str(uuid.uuid4()), "cat", PIXELS, 1700000000.5, "cam-1")
    obj = json.loads(msg.encode())
    obj.update(overrides)
    return json.dumps(obj).encode()


def prediction(**overrides: object) -> bytes:
    obj = json.loads(PredictionMessage(str(uuid.uuid4()), "cat", 0.5, 1.0).encode())
    obj.update(overrides)
    return json.dumps(obj).encode()


def without(raw: bytes, name: str) -> bytes:
    obj = json.loads(raw)
    del obj[name]
    return json.dumps(obj).encode()


def png_of(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def png_header(width: int, height: int, depth: int = 8, colour: int = 2, interlace: int = 0) -> bytes:
    """A PNG signature and IHDR chunk (valid CRC) declaring whatever we like, and no pixels."""
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_image_message_round_trips_pixels_exactly() -> None:
    msg = ImageMessage.from_pixels(str(uuid.uuid4()), "ship", PIXELS, 1.5, "cam")
    decoded = ImageMessage.decode(msg.encode())
    assert decoded == msg
    assert decoded.pixels is not None
    np.testing.assert_array_equal(decoded.pixels, PIXELS)
    assert set(json.loads(msg.encode())) == {"ID", "GroundTruth", "Data", "ProducedAt", "Source"}


def test_prediction_message_round_trips() -> None:
    msg = PredictionMessage(str(uuid.uuid4()), "frog", 0.93, 1700000001.0)
    assert PredictionMessage.decode(msg.encode()) == msg
    obj = json.loads(msg.encode())
    assert obj["Model"] == "cifar10_resnet20"
    assert set(obj) == {"ID", "InferredValue", "Confidence", "Model", "InferredAt"}


def test_encoded_messages_are_compact_json_with_the_models_field_names_in_order() -> None:
    encoded = {
        ImageWire: ImageMessage.from_pixels(str(uuid.uuid4()), "cat", PIXELS, 1.5, "cam").encode(),
        PredictionWire: PredictionMessage(str(uuid.uuid4()), "cat", 0.5, 2.0).encode(),
    }
    for model, raw in encoded.items():
        assert b", " not in raw and b": " not in raw
        assert list(json.loads(raw)) == [f.alias for f in model.model_fields.values()]
        assert model.model_validate_json(raw)  # what we write is what we accept


def test_the_sink_can_skip_the_pixels_and_gets_the_same_message() -> None:
    raw = image()
    full, header_only = ImageMessage.decode(raw), ImageMessage.decode(raw, with_pixels=False)
    assert header_only == full and header_only.png == full.png
    assert header_only.pixels is None


def test_without_pixels_no_pixel_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("PIL was asked to open the image")

    monkeypatch.setattr(Image, "open", no_decoding)
    assert ImageMessage.decode(image(), with_pixels=False).pixels is None
    with pytest.raises(InvalidMessageError, match="bad_image"):
        ImageMessage.decode(image(Data=png_of(Image.new("RGB", (64, 64)))), with_pixels=False)


@pytest.mark.parametrize(
    "header",
    [
        png_header(20000, 20000),
        png_header(2**31 - 1, 1),
        png_header(32, 32, depth=16),
        png_header(32, 32, colour=6),
        png_header(32, 32, interlace=7),
        png_header(32, 32)[:-1],
        png_header(32, 32)[:-4] + b"\0\0\0\0",  # CRC
        png_header(32, 32).replace(b"IHDR", b"IHDX"),
    ],
)
@pytest.mark.parametrize("with_pixels", [True, False])
def test_the_png_header_is_refused_before_any_pixel(header: bytes, with_pixels: bool) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        ImageMessage.decode(image(Data=b64(header + b"IDAT garbage")), with_pixels=with_pixels)
    assert caught.value.reason == "bad_image"


def test_broken_pixel_data_behind_a_good_header_is_caught_only_where_pixels_are_decoded() -> None:
    truncated = png_header(32, 32) + b"\0\0\0\x05IDAT\0\0\0\0\0"
    assert ImageMessage.decode(image(Data=b64(truncated)), with_pixels=False).pixels is None
    with pytest.raises(InvalidMessageError) as caught:
        ImageMessage.decode(image(Data=b64(truncated)))
    assert caught.value.reason == "bad_image"


def png_bomb(side: int = 10000) -> str:
    """A small PNG whose header declares side x side pixels (PIL's decompression bomb)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def deeply_nested(depth: int) -> bytes:
    return b'{"ID": ' + b"[" * depth + b"]" * depth + b"}"


# Each of these once escaped decode as something else (OverflowError, RecursionError, PIL's
# DecompressionBombError, ValueError for a 5000-digit integer) or passed it (NaN), and stopped a
# service on every restart.
CRASH_INPUTS = {
    "not_json": [
        deeply_nested(30_000),
        image().replace(b'"ProducedAt": 1700000000.5', b'"ProducedAt": NaN'),
        image().replace(b'"ProducedAt": 1700000000.5', b'"ProducedAt": -Infinity'),
        image().replace(b'"ProducedAt": 1700000000.5', b'"ProducedAt": ' + b"9" * 5000),
    ],
    "invalid_field": [
        image(ProducedAt=10**400),
        image().replace(b'"ProducedAt": 1700000000.5', b'"ProducedAt": 1e999'),
        image(Data=png_bomb(20000)),
    ],
    "bad_image": [image(Data=png_bomb())],
    "too_large": [deeply_nested(200_000), image(Source="x" * 1_000_000)],
}

BAD_IMAGES = {
    "not_json": [b"\xff\xfe not json", b"", b"[1, 2]", None, '{"ID": "é"}'.encode("utf-16")],
    "missing_field": [image(GroundTruth=None), json.dumps({"ID": str(uuid.uuid4())}).encode()],
    "invalid_field": [
        image(ID="not-a-uuid"),
        image(ID=12345),
        image(ProducedAt="yesterday"),
        image(ProducedAt="1700000000.5"),
        image(ProducedAt=True),
        image(Source=""),
        image(Source="x" * (MAX_NAME_CHARS + 1)),
        image(Source=["cam"]),
        image(GroundTruth=3),
        image(Data="A" * (MAX_DATA_CHARS + 4)),
        image(Data=5),
    ],
    "bad_base64": [image(Data="%%% not base64 %%%"), image(Data="QUJD="), image(Data="QUJDRA")],
    "bad_image": [
        image(Data=""),
        image(Data=base64.b64encode(b"just bytes").decode()),
        image(Data=png_of(Image.new("RGB", (64, 64)))),
        image(Data=png_of(Image.new("L", (32, 32)))),
        image(Data=png_of(Image.new("RGBA", (32, 32)))),
        image(Data=png_of(Image.new("RGB", (32, 32)), "JPEG")),
    ],
    "unknown_class": [image(GroundTruth="unicorn"), image(GroundTruth="Cat")],
    "too_large": [image(Source="x" * MAX_MESSAGE_BYTES)],
}


@pytest.mark.parametrize(
    ("reason", "raw"), [(reason, raw) for reason, raws in BAD_IMAGES.items() for raw in raws]
)
@pytest.mark.parametrize("with_pixels", [True, False])
def test_each_contract_violation_has_its_reason(reason: str, raw: bytes | None, with_pixels: bool) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        ImageMessage.decode(raw, with_pixels=with_pixels)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("reason", "raw"), [(reason, raw) for reason, raws in CRASH_INPUTS.items() for raw in raws]
)
def test_crafted_inputs_are_contract_errors_not_crashes(reason: str, raw: bytes) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        ImageMessage.decode(raw)
    assert caught.value.reason == reason


def test_every_dlq_reason_the_schema_gives_is_exercised() -> None:
    # `undecodable` is the services' catch-all for what the contract did not foresee: never raised here.
    assert set(BAD_IMAGES) == set(DLQ_REASONS) - {"undecodable"}


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (without(image(), "ProducedAt"), "missing_field", "ProducedAt is missing"),
        (image(Source=None), "missing_field", "Source is null"),
        (image(GroundTruth="unicorn"), "unknown_class", "GroundTruth 'unicorn' is not a CIFAR-10 class"),
        (image(ID="nope"), "invalid_field", "ID: Input should be a valid UUID"),
        (image(ProducedAt=True), "invalid_field", "ProducedAt: Input should be a valid number"),
        (image(Data="***"), "bad_base64", "Data is not valid base64"),
        (image(Data=png_of(Image.new("RGB", (64, 64)))), "bad_image", "header declares 64x64"),
    ],
)
def test_the_detail_names_the_field(raw: bytes, reason: str, detail: str) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        ImageMessage.decode(raw)
    assert caught.value.reason == reason
    assert detail in caught.value.detail


def test_any_uuid_is_an_id_and_it_is_stored_canonical() -> None:
    v5 = uuid.uuid5(uuid.NAMESPACE_URL, "cifar10/test/0")
    for written in (str(v5), str(v5).upper(), v5.hex, f"{{{v5}}}", f"urn:uuid:{v5}"):
        assert ImageMessage.decode(image(ID=written)).id == str(v5)


def test_timestamps_may_be_integers_and_unknown_fields_are_ignored() -> None:
    msg = ImageMessage.decode(image(ProducedAt=1700000000, Extra={"deep": [[[1]]]}, Note=float("1e300")))
    assert msg.produced_at == 1700000000.0 and isinstance(msg.produced_at, float)


def test_a_message_just_under_the_limit_is_parsed() -> None:
    raw = image()
    padded = raw[:-1] + b', "Pad": "' + b"x" * (MAX_MESSAGE_BYTES - len(raw) - 11) + b'"}'
    assert len(padded) == MAX_MESSAGE_BYTES
    assert ImageMessage.decode(padded).id == json.loads(raw)["ID"]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"InferredValue": "dragon"}, "unknown_class"),
        ({"Confidence": 1.5}, "invalid_field"),
        ({"Confidence": -0.1}, "invalid_field"),
        ({"Confidence": "0.5"}, "invalid_field"),
        ({"Confidence": False}, "invalid_field"),
        ({"Confidence": None}, "missing_field"),
        ({"InferredAt": 10**400}, "invalid_field"),
        ({"Model": ""}, "invalid_field"),
        ({"Model": None}, "missing_field"),
        ({"ID": "../../_all_docs"}, "invalid_field"),
    ],
)
def test_bad_predictions_are_rejected(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        PredictionMessage.decode(prediction(**overrides))
    assert caught.value.reason == reason


def test_bad_predictions_are_refused_like_images() -> None:
    for raw, reason in [
        (b"x" * (MAX_MESSAGE_BYTES + 1), "too_large"),
        (prediction().replace(b'"Confidence": 0.5', b'"Confidence": NaN'), "not_json"),
        (without(prediction(), "InferredAt"), "missing_field"),
    ]:
        with pytest.raises(InvalidMessageError) as caught:
            PredictionMessage.decode(raw)
        assert caught.value.reason == reason


def test_classes_are_cifar10_in_label_order() -> None:
    assert CLASSES[0] == "airplane" and CLASSES[3] == "cat" and CLASSES[9] == "truck"
    assert len(CLASSES) == 10
