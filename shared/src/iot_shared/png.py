"""The images' PNG codec: one 32x32 RGB image to a lossless PNG and back, refusing anything else.

A PNG from the wire is checked from its header (signature and IHDR) before PIL decodes a pixel, so
a header declaring another size, depth or colour type costs nothing; what is wrong is
`InvalidMessageError("bad_image", ...)`, like every other breach of the contract.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import numpy.typing as npt
from PIL import Image

from iot_shared.errors import InvalidMessageError

IMAGE_SIZE = 32
Pixels = npt.NDArray[np.uint8]  # (32, 32, 3) RGB, HWC

# PIL's guard against decompression bombs, shrunk to our one image size. The PNG header is checked
# before PIL sees the image, so this only backs that check up.
Image.MAX_IMAGE_PIXELS = IMAGE_SIZE * IMAGE_SIZE


def pixels_to_png(pixels: Pixels) -> bytes:
    """Lossless PNG of one 32x32 RGB image."""
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or pixels.dtype != np.uint8:
        raise ValueError(f"expected a (32, 32, 3) uint8 array, got {pixels.shape} {pixels.dtype}")
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The first chunk: length, type, width, height, bit depth, colour type, compression, filter,
# interlace, CRC.
_IHDR = struct.Struct(">I4sIIBBBBBI")
_RGB = 2  # PNG colour type


def check_png_header(png: bytes) -> None:
    """Refuse anything but a 32x32 8-bit RGB PNG from its header alone: no pixel is decoded."""
    if not png.startswith(PNG_SIGNATURE):
        raise InvalidMessageError("bad_image", "not a PNG")
    if len(png) < len(PNG_SIGNATURE) + _IHDR.size:
        raise InvalidMessageError("bad_image", "PNG header is truncated")
    length, kind, width, height, depth, colour, compression, filter_, interlace, crc = _IHDR.unpack_from(
        png, len(PNG_SIGNATURE)
    )
    if length != 13 or kind != b"IHDR" or zlib.crc32(png[12:29]) != crc:  # CRC of type and data
        raise InvalidMessageError("bad_image", "PNG has no valid IHDR chunk first")
    if (width, height, depth, colour) != (IMAGE_SIZE, IMAGE_SIZE, 8, _RGB):
        raise InvalidMessageError(
            "bad_image",
            f"expected a 32x32 8-bit RGB PNG, the header declares {width}x{height}, "
            f"bit depth {depth}, colour type {colour}",
        )
    if compression != 0 or filter_ != 0 or interlace not in (0, 1):
        raise InvalidMessageError("bad_image", "PNG header has an unknown compression, filter or interlace")


# What PIL raises on a broken PNG: its decoders report OSError (truncated or corrupt data), its chunk
# parsers SyntaxError, EOFError, ValueError or struct.error.
_PIL_ERRORS = (
    OSError,
    SyntaxError,
    EOFError,
    ValueError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


def png_to_pixels(png: bytes) -> Pixels:
    """Decode a PNG that must be 32x32 RGB; anything else is `bad_image`."""
    check_png_header(png)
    try:
        with Image.open(io.BytesIO(png), formats=["PNG"]) as img:
            if img.size != (IMAGE_SIZE, IMAGE_SIZE) or img.mode != "RGB":  # as the header said
                raise InvalidMessageError("bad_image", f"PIL reads {img.size} {img.mode}")
            pixels = np.asarray(img, dtype=np.uint8)
    except _PIL_ERRORS as exc:
        raise InvalidMessageError(
            "bad_image", f"cannot decode the PNG: {type(exc).__name__}: {exc}"
        ) from None
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise InvalidMessageError("bad_image", f"decoded to {pixels.shape}, not (32, 32, 3)")
    return pixels.copy()
