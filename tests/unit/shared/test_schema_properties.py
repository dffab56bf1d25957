"""Whatever arrives on a topic, decode returns a valid message or raises the contract's error.

Inputs are arbitrary bytes and valid messages mutated the ways an attacker or a broken producer
would: deep nesting, huge integers, NaN and Infinity, wrong types, megabyte strings, PNG bombs and
PNGs of other sizes and modes, missing and extra fields.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import re
import struct
import uuid
import zlib
from collections.abc import Callable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from iot_shared.errors import DLQ_REASONS, InvalidMessageError
from iot_shared.png import IMAGE_SIZE
from iot_shared.schema import (
    BASE64_PATTERN,
    CLASSES,
    ImageMessage,
    PredictionMessage,
)

# No example database: runs leave nothing in the checkout.
FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

PIXELS = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
IMAGE = json.loads(ImageMessage.from_pixels(str(uuid.uuid4()), "cat", PIXELS, 1.5, "cam").encode())
PREDICTION = json.loads(PredictionMessage(str(uuid.uuid4()), "cat", 0.5, 2.0).encode())


def decoded_or_refused(decode: Callable[[bytes], object], raw: bytes) -> object | None:
    """The message, or None where it was refused with a reason of the contract; nothing else."""
    try:
        return decode(raw)
    except InvalidMessageError as exc:
        assert exc.reason in DLQ_REASONS and exc.reason != "undecodable"
        assert exc.detail
        return None


def check_image(raw: bytes) -> None:
    msg = decoded_or_refused(ImageMessage.decode, raw)
    header_only = decoded_or_refused(functools.partial(ImageMessage.decode, with_pixels=False), raw)
    if msg is None:
        return
    # What decodes with its pixels decodes without them, to the same message.
    assert isinstance(msg, ImageMessage) and header_only == msg
    assert msg.id == str(uuid.UUID(msg.id)) and msg.ground_truth in CLASSES
    assert isinstance(msg.produced_at, float) and math.isfinite(msg.produced_at)
    assert msg.source and msg.pixels is not None and msg.pixels.shape == (32, 32, 3)
    assert ImageMessage.decode(msg.encode()) == msg


def check_prediction(raw: bytes) -> None:
    msg = decoded_or_refused(PredictionMessage.decode, raw)
    if msg is None:
        return
    assert isinstance(msg, PredictionMessage)
    assert msg.id == str(uuid.UUID(msg.id)) and msg.inferred_value in CLASSES
    assert 0.0 <= msg.confidence <= 1.0 and math.isfinite(msg.inferred_at) and msg.model
    assert PredictionMessage.decode(msg.encode()) == msg


# --- PNGs: other sizes and modes, bombs, lying headers, corrupted bodies -------------------------


def png_bytes(mode: str, size: tuple[int, int], seed: int) -> bytes:
    noise = np.random.default_rng(seed).bytes(size[0] * size[1] * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", size, noise).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


@functools.cache
def bomb(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def ihdr(width: int, height: int, depth: int, colour: int, interlace: int) -> bytes:
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def corrupt(png: bytes, edits: list[tuple[int, int]]) -> bytes:
    """Overwrite bytes after the header (offset >= 33), so the header stays valid."""
    body = bytearray(png)
    for position, value in edits:
        body[33 + position % (len(body) - 33)] = value
    return bytes(body)


VALID_PNG = base64.b64decode(IMAGE["Data"])
pngs = st.one_of(
    st.builds(
        png_bytes,
        st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]),
        st.tuples(st.integers(1, 64), st.integers(1, 64)) | st.just((32, 32)),
        st.integers(0, 2**32 - 1),
    ),
    st.sampled_from([10_000, 20_000]).map(bomb),
    st.builds(
        lambda header, tail: header + tail,
        st.builds(
            ihdr,
            st.sampled_from([0, 1, 31, 32, 33, 2**31 - 1, 2**32 - 1]),
            st.sampled_from([0, 1, 32, 20_000, 2**32 - 1]),
            st.sampled_from([1, 2, 4, 8, 16, 255]),
            st.sampled_from([0, 2, 3, 4, 6, 7]),
            st.sampled_from([0, 1, 2]),
        ),
        st.binary(max_size=200) | st.just(VALID_PNG[33:]),
    ),
    st.builds(corrupt, st.just(VALID_PNG), st.lists(st.tuples(st.integers(0), st.integers(0, 255)))),
    st.builds(lambda n: VALID_PNG[:n], st.integers(0, len(VALID_PNG))),
    st.binary(max_size=100),
)

# --- JSON values, written as text so that they may be what json.dumps would never write -----------

plain_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
).map(lambda value: json.dumps(value, allow_nan=True))
nasty_json = st.one_of(
    plain_json,
    st.integers(1, 40_000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 20_000).map(lambda depth: '{"a":' * depth + "0" + "}" * depth),
    st.integers(300, 6000).map(lambda digits: "9" * digits),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0.0", "0", "1", "2"]),
    st.sampled_from(["true", "false", "null", '""', '"1.5"', '"\\ud800"', '"\\u0000"', "{}", "[]"]),
    st.sampled_from([60_000, 1_000_000]).map(lambda n: json.dumps("A" * n)),
    pngs.map(lambda png: json.dumps(base64.b64encode(png).decode())),
    st.uuids().map(lambda u: json.dumps(u.hex)),
    st.sampled_from([*CLASSES, "Cat", "unicorn", "cifar10_resnet20"]).map(json.dumps),
    st.floats(0, 1).map(json.dumps),
)


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, object]) -> bytes:
    """A valid message with some fields replaced, removed or added, as JSON text."""
    fields = {name: json.dumps(value) for name, value in valid.items()}
    names = st.sampled_from(sorted(valid)) | st.text(max_size=8)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(names)
        if draw(st.booleans()) and name in fields:
            del fields[name]
        else:
            fields[name] = draw(nasty_json)
    text = "{" + ",".join(f"{json.dumps(name)}:{value}" for name, value in fields.items()) + "}"
    return text.encode()


@FAST
@given(st.binary(max_size=2000) | plain_json.map(str.encode))
def test_arbitrary_bytes_are_a_message_or_a_contract_error(raw: bytes) -> None:
    check_image(raw)
    check_prediction(raw)


@FAST
@given(mutated(IMAGE))
def test_mutated_image_messages_are_valid_or_a_contract_error(raw: bytes) -> None:
    check_image(raw)


@FAST
@given(mutated(PREDICTION))
def test_mutated_predictions_are_valid_or_a_contract_error(raw: bytes) -> None:
    check_prediction(raw)


@FAST
@given(pngs)
def test_any_png_is_accepted_only_as_a_32x32_rgb_image(png: bytes) -> None:
    raw = json.dumps({**IMAGE, "Data": base64.b64encode(png).decode()}).encode()
    msg = decoded_or_refused(ImageMessage.decode, raw)
    if msg is not None:
        assert isinstance(msg, ImageMessage) and msg.png == png
    check_image(raw)


@FAST
@given(st.text(alphabet="AQgw+/=", max_size=12) | st.text(max_size=12), st.binary(max_size=12))
def test_the_base64_pattern_accepts_what_we_write_and_nothing_b64decode_refuses(
    text: str, data: bytes
) -> None:
    assert re.fullmatch(BASE64_PATTERN, base64.b64encode(data).decode())
    if re.fullmatch(BASE64_PATTERN, text):
        base64.b64decode(text, validate=True)  # so decoding after validation cannot fail
    # The pattern is stricter than b64decode: it wants the padding a base64 encoder writes.
    assert not re.fullmatch(BASE64_PATTERN, "AAAA=")
