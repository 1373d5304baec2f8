"""The images an image-to-image or inpaint request starts from when nobody supplies one: a noise
image and a centred rectangular mask, as base64 PNGs. The validator's synthetic requests and the
miner's calibration send the same shape."""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import numpy as np
from PIL import Image


@lru_cache(maxsize=32)
def noise_and_mask(size: int, variant: int) -> tuple[str, str]:
    """(image, mask) of ``size`` x ``size`` pixels; ``variant`` seeds the noise."""
    rng = np.random.default_rng(variant)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255

    def b64(array, mode):
        buf = io.BytesIO()
        Image.fromarray(array, mode).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    return b64(pixels, "RGB"), b64(mask, "L")
