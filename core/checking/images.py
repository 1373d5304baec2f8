"""Checking images by regenerating them with the same model, seed, steps and parameters, and
comparing at a resolution coarse enough to tolerate GPU non-determinism."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from core.backends.diffusers_images import DiffusersImages
from core.checking import Verdict
from core.protocol import ImageRequest, ImageResponse

DISTANCE_MAX = 0.04  # mean absolute difference of 32x32 grey thumbnails, as a share of 255
THUMB = 32


def thumbnail(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png)).convert("L")
    image = image.resize((THUMB, THUMB), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def distance(a: bytes, b: bytes) -> float:
    """Mean absolute difference of grey thumbnails, 0 (same) .. 1."""
    return float(np.abs(thumbnail(a) - thumbnail(b)).mean())


def check_images(reference: DiffusersImages, request: ImageRequest, response: ImageResponse,
                 max_distance: float = DISTANCE_MAX) -> Verdict:
    if response.units != request.units:
        return Verdict(False, f"charged {response.units} steps for {request.units} requested")
    if len(response.images) != request.num_images:
        return Verdict(False, f"{len(response.images)} images for {request.num_images} requested")
    try:
        theirs = [base64.b64decode(i, validate=True) for i in response.images]
        ours = reference.generate(request)
        worst = max(distance(a, b) for a, b in zip(theirs, ours))
    except (ValueError, OSError) as e:
        return Verdict(False, f"images do not decode: {e}")
    if worst > max_distance:
        return Verdict(False, f"images differ from the reference by {worst:.3f} "
                              f"(tolerance {max_distance})")
    return Verdict(True)
