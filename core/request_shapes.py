"""The shape of a synthetic request, shared by the validator's synthetic traffic and the miner's
calibration so both measure the same work: a prompt of a few common words, and for image-to-image
and inpaint a noise image and a centred rectangular mask (base64 PNGs)."""

from __future__ import annotations

import base64
import io
import random
from functools import lru_cache

import numpy as np
from PIL import Image

WORDS = [
    "river", "mountain", "quiet", "city", "lantern", "forest", "ocean", "copper", "violet",
    "engine", "garden", "winter", "harbor", "signal", "meadow", "thunder", "glass", "orchard",
    "desert", "comet", "library", "bridge", "marble", "echo", "falcon", "canyon", "velvet",
    "circuit", "island", "summer", "shadow", "crystal",
]


def prompt(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


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
