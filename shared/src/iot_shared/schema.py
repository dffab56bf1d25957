"""The message contract between producer, inference and sink (see README, "Message contract").

Decoding is strict: anything that breaks the contract raises `InvalidMessageError` with one of
the fixed `DlqReason`s, so services can dead-letter it and go on.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from iot_shared.errors import InvalidMessageError

CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SIZE = 32
MODEL_NAME = "cifar10_resnet20"

Pixels = npt.NDArray[np.uint8]  # (32, 32, 3) RGB, HWC


@dataclass(frozen=True, slots=True)
class ImageMessage:
    """`iot-topic`: one image with its ground truth."""

    id: str
    ground_truth: str
    png: bytes
    produced_at: float
    source: str
    pixels: Pixels = field(compare=False, repr=False)  # decoded from `png`, kept to decode once

    @classmethod
    def from_pixels(
        cls, id: str, ground_truth: str, pixels: Pixels, produced_at: float, source: str
    ) -> ImageMessage:
        return cls(id, ground_truth, pixels_to_png(pixels), produced_at, source, pixels)

    def encode(self) -> bytes:
        return _dump(
            {
                "ID": self.id,
                "GroundTruth": self.ground_truth,
                "Data": base64.b64encode(self.png).decode("ascii"),
                "ProducedAt": self.produced_at,
                "Source": self.source,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | None) -> ImageMessage:
        obj = _load(raw)
        png = _base64_field(obj, "Data")
        return cls(
            id=_id_field(obj),
            ground_truth=_class_field(obj, "GroundTruth"),
            png=png,
            produced_at=_number_field(obj, "ProducedAt"),
            source=_str_field(obj, "Source"),
            pixels=png_to_pixels(png),  # also validates: a 32x32 RGB PNG
        )


@dataclass(frozen=True, slots=True)
class PredictionMessage:
    """`iot-predictions`: the model's answer for one image."""

    id: str
    inferred_value: str
    confidence: float
    inferred_at: float
    model: str = MODEL_NAME

    def encode(self) -> bytes:
        return _dump(
            {
                "ID": self.id,
                "InferredValue": self.inferred_value,
                "Confidence": self.confidence,
                "Model": self.model,
                "InferredAt": self.inferred_at,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | None) -> PredictionMessage:
        obj = _load(raw)
        confidence = _number_field(obj, "Confidence")
        if not 0.0 <= confidence <= 1.0:
            raise InvalidMessageError("invalid_field", f"Confidence {confidence} is not in [0, 1]")
        return cls(
            id=_id_field(obj),
            inferred_value=_class_field(obj, "InferredValue"),
            confidence=confidence,
            inferred_at=_number_field(obj, "InferredAt"),
            model=_str_field(obj, "Model"),
        )


def pixels_to_png(pixels: Pixels) -> bytes:
    """Lossless PNG of one 32x32 RGB image."""
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or pixels.dtype != np.uint8:
        raise ValueError(f"expected a (32, 32, 3) uint8 array, got {pixels.shape} {pixels.dtype}")
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def png_to_pixels(png: bytes) -> Pixels:
    """Decode a PNG that must be 32x32 RGB; anything else is `bad_image`."""
    try:
        with Image.open(io.BytesIO(png)) as img:
            if img.format != "PNG":
                raise InvalidMessageError("bad_image", f"not a PNG but {img.format}")
            if img.size != (IMAGE_SIZE, IMAGE_SIZE) or img.mode != "RGB":
                raise InvalidMessageError(
                    "bad_image", f"expected a 32x32 RGB image, got {img.size} {img.mode}"
                )
            return np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        # DecompressionBombError: a header that declares far more pixels than it holds; the size
        # check above refuses smaller lies before any pixel is decoded.
        raise InvalidMessageError("bad_image", f"cannot decode the image: {exc}") from exc


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _load(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        raise InvalidMessageError("not_json", "empty message")
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidMessageError("not_json", str(exc)) from exc
    except RecursionError as exc:
        raise InvalidMessageError("not_json", "nested too deeply") from exc
    if not isinstance(obj, dict):
        raise InvalidMessageError("not_json", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _reject_constant(name: str) -> float:
    # Python's json reads NaN and Infinity, which are not JSON: CouchDB would refuse the document.
    raise InvalidMessageError("not_json", f"{name} is not a JSON value")


def _field(obj: dict[str, Any], name: str) -> Any:
    if name not in obj or obj[name] is None:
        raise InvalidMessageError("missing_field", f"{name} is missing")
    return obj[name]


def _str_field(obj: dict[str, Any], name: str) -> str:
    value = _field(obj, name)
    if not isinstance(value, str) or not value:
        raise InvalidMessageError("invalid_field", f"{name} must be a non-empty string")
    return value


def _number_field(obj: dict[str, Any], name: str) -> float:
    value = _field(obj, name)
    # bool is an int in Python, but true is no timestamp.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessageError("invalid_field", f"{name} must be a number")
    try:
        number = float(value)
    except OverflowError as exc:  # an integer of hundreds of digits
        raise InvalidMessageError("invalid_field", f"{name} is out of range") from exc
    if not math.isfinite(number):
        raise InvalidMessageError("invalid_field", f"{name} must be finite")
    return number


def _id_field(obj: dict[str, Any]) -> str:
    value = _str_field(obj, "ID")
    # A UUID keeps document IDs safe for CouchDB (no leading underscore, no slashes).
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise InvalidMessageError("invalid_field", f"ID {value!r} is not a UUID") from exc


def _class_field(obj: dict[str, Any], name: str) -> str:
    value = _str_field(obj, name)
    if value not in CLASSES:
        raise InvalidMessageError("unknown_class", f"{name} {value!r} is not a CIFAR-10 class")
    return value


def _base64_field(obj: dict[str, Any], name: str) -> bytes:
    value = _str_field(obj, name)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMessageError("bad_base64", f"{name} is not valid base64: {exc}") from exc
