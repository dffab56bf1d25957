"""The message contract between producer, inference and sink (docs/contract.md).

`ImageWire` and `PredictionWire` are the wire formats as pydantic models; `ImageMessage` and
`PredictionMessage` are what the services handle. Decoding is strict and bounded: for any input it
returns a valid message or raises `InvalidMessageError` with one of the fixed `DlqReason`s, so
services can dead-letter it and go on. Each step is made safe on its own (size before parsing,
parsing before validation, the PNG header before any pixel: see `png`) rather than by catching
everything.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from pydantic_core import ErrorDetails

from iot_shared import wire_fields as wire
from iot_shared.errors import InvalidMessageError
from iot_shared.png import Pixels, check_png_header, pixels_to_png, png_to_pixels

ClassName = Literal[
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
]
CLASSES: tuple[str, ...] = get_args(ClassName)  # in CIFAR-10 label order
MODEL_NAME = "cifar10_resnet20"

# A valid image message is about 4 KB; anything far larger is refused before it is parsed.
MAX_MESSAGE_BYTES = 64 * 1024
# A 32x32 RGB PNG holds at most ~3.2 KB of pixel data; the rest leaves room for ancillary chunks.
MAX_PNG_BYTES = 16 * 1024
MAX_DATA_CHARS = 4 * -(-MAX_PNG_BYTES // 3)  # base64 of MAX_PNG_BYTES
MAX_NAME_CHARS = 256  # Source and Model
# Standard base64 as encoders write it, padded to groups of 4: b64decode(validate=True) takes all of it.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # no bools, no numeric strings
Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Base64Png = Annotated[StrictStr, Field(max_length=MAX_DATA_CHARS, pattern=BASE64_PATTERN)]


class _Wire(BaseModel):
    # Unknown fields are ignored (and never looked into); inputs stay out of error texts.
    model_config = ConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)


class ImageWire(_Wire):
    """`iot-topic` on the wire."""

    id: uuid.UUID = Field(alias=wire.ID, description="the image's ID (any UUID version)")
    ground_truth: ClassName = Field(alias=wire.GROUND_TRUTH, description="CIFAR-10 class name")
    data: Base64Png = Field(alias=wire.DATA, description="base64 of a 32x32 RGB PNG")
    produced_at: FiniteFloat = Field(alias=wire.PRODUCED_AT, description="Unix epoch seconds when sent")
    source: Name = Field(alias=wire.SOURCE, description="producer ID")


class PredictionWire(_Wire):
    """`iot-predictions` on the wire."""

    id: uuid.UUID = Field(alias=wire.ID, description="the image's ID")
    inferred_value: ClassName = Field(alias=wire.INFERRED_VALUE, description="predicted class name")
    confidence: Annotated[FiniteFloat, Field(ge=0.0, le=1.0)] = Field(
        alias=wire.CONFIDENCE, description="softmax probability of that class"
    )
    model: Name = Field(alias=wire.MODEL, description="the model's name")
    inferred_at: FiniteFloat = Field(alias=wire.INFERRED_AT, description="Unix epoch seconds")


@dataclass(frozen=True, slots=True)
class ImageMessage:
    """`iot-topic`: one image with its ground truth."""

    id: str
    ground_truth: str
    png: bytes
    produced_at: float
    source: str
    # Decoded from `png` once, for inference; None where the pixels were not asked for (the sink).
    pixels: Pixels | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_pixels(
        cls, id: str, ground_truth: str, pixels: Pixels, produced_at: float, source: str
    ) -> ImageMessage:
        return cls(id, ground_truth, pixels_to_png(pixels), produced_at, source, pixels)

    def encode(self) -> bytes:
        return _dump(
            {
                wire.ID: self.id,
                wire.GROUND_TRUTH: self.ground_truth,
                wire.DATA: base64.b64encode(self.png).decode("ascii"),
                wire.PRODUCED_AT: self.produced_at,
                wire.SOURCE: self.source,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | None, *, with_pixels: bool = True) -> ImageMessage:
        """Validate an image message; `with_pixels=False` checks the PNG header only."""
        wire = _validate(ImageWire, raw)
        png = _decode_base64(wire.data)
        pixels: Pixels | None = None
        if with_pixels:
            pixels = png_to_pixels(png)  # checks the header first
        else:
            check_png_header(png)
        return cls(str(wire.id), wire.ground_truth, png, wire.produced_at, wire.source, pixels)


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
                wire.ID: self.id,
                wire.INFERRED_VALUE: self.inferred_value,
                wire.CONFIDENCE: self.confidence,
                wire.MODEL: self.model,
                wire.INFERRED_AT: self.inferred_at,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | None) -> PredictionMessage:
        wire = _validate(PredictionWire, raw)
        return cls(str(wire.id), wire.inferred_value, wire.confidence, wire.inferred_at, wire.model)


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


WireModel = TypeVar("WireModel", bound=_Wire)


def _validate(model: type[WireModel], raw: bytes | None) -> WireModel:
    obj = _load(raw)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        # `from None`: the inputs stay out of tracebacks (a field may hold 64 KiB or deep nesting).
        raise _contract_error(exc.errors(include_url=False)[0]) from None


def _load(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        raise InvalidMessageError("not_json", "empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessageError("too_large", f"{len(raw)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise InvalidMessageError("not_json", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise InvalidMessageError("not_json", "nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        raise InvalidMessageError("not_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise InvalidMessageError("not_json", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _reject_constant(name: str) -> float:
    # Python's json reads NaN and Infinity, which are not JSON: CouchDB would refuse the document.
    raise InvalidMessageError("not_json", f"{name} is not a JSON value")


def _contract_error(error: ErrorDetails) -> InvalidMessageError:
    """The first thing pydantic found wrong, as a dead-letter reason and a short detail."""
    name = ".".join(str(part) for part in error["loc"]) or "message"
    value = error["input"]
    if error["type"] == "missing":
        return InvalidMessageError("missing_field", f"{name} is missing")
    if value is None:
        return InvalidMessageError("missing_field", f"{name} is null")
    if error["type"] == "literal_error" and isinstance(value, str):
        return InvalidMessageError("unknown_class", f"{name} {value[:40]!r} is not a CIFAR-10 class")
    if error["type"] == "string_pattern_mismatch" and name == wire.DATA:
        return InvalidMessageError("bad_base64", "Data is not valid base64")
    return InvalidMessageError("invalid_field", f"{name}: {error['msg']}")


def _decode_base64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:  # BASE64_PATTERN lets none through; kept in case they ever differ
        raise InvalidMessageError("bad_base64", f"Data is not valid base64: {exc}") from None
