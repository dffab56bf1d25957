from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from iot_shared.errors import InvalidMessageError
from iot_shared.png import pixels_to_png, png_to_pixels

PIXELS = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_pixels_survive_the_png_round_trip() -> None:
    assert np.array_equal(png_to_pixels(pixels_to_png(PIXELS)), PIXELS)


def test_png_to_pixels_rejects_truncated_png() -> None:
    png = pixels_to_png(PIXELS)
    with pytest.raises(InvalidMessageError, match="bad_image"):
        png_to_pixels(png[: len(png) // 2])


def test_pil_refuses_anything_larger_than_our_image() -> None:
    assert Image.MAX_IMAGE_PIXELS == 32 * 32
