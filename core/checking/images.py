"""Checking images (docs/protocol.md §8): the answer's trajectory commitment opened at steps the
validator drew after receipt, each opened step re-run alone with the reference pipeline
(``core.checking.trajectory``), and the miner's final latent decoded by the reference and
compared with its PNG at a resolution coarse enough to tolerate GPU non-determinism. The answer
came by reference (a sha256 and a thumbnail per image): the full PNGs, fetched with the openings,
must be the committed ones and have those thumbnails (``verified_pngs``, which the validator's
organic traffic applies to the PNGs its clients get).

Whatever a miner's answer does to the reading of it is the miner's failure: an image is read
only once its PNG header says it has the request's size, and any exception while reading it is a
failed check with the reason, never a check that "failed to run"."""

from __future__ import annotations

import base64
import io
import struct
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.checking import Verdict
from core.checking.trajectory import (
    STEP_TOLERANCE,
    OpeningProblem,
    Openings,
    replay,
    verify_openings,
)
from core.protocol import THUMBNAIL_PX, ImageRequest, ImageResponse, png_digest

if TYPE_CHECKING:  # the validator reads PNG headers on receipt without importing torch
    from core.backends.diffusers_images import DiffusersImages

DISTANCE_MAX = 0.04  # mean absolute difference of 32x32 grey thumbnails, as a share of 255
# the most an answer's thumbnail may differ from its full image at 32x32 grey: resizing first
# and turning grey last differs by rounding only (honest: <= 0.001 at 64 and at 1024 px)
THUMBNAIL_MATCH = 0.01
THUMB = 32
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR (bytes 16..24), read before any pixel; ValueError when
    ``data`` does not start as a PNG does."""
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def grey_thumbnail(image: Image.Image) -> np.ndarray:
    grey = image.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float32) / 255.0


def thumbnail(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """The grey 32x32 thumbnail of a PNG; with ``size``, a PNG of any other size is refused
    before its pixels are decoded (ValueError), so decoding is bounded by the request."""
    if size is not None and png_size(data) != size:
        raise ValueError(f"a {png_size(data)} PNG for a {size} request")
    with Image.open(io.BytesIO(data)) as image:
        if size is not None and image.size != size:  # what PIL read, not only the first bytes
            raise ValueError(f"a {image.size} image for a {size} request")
        return grey_thumbnail(image)


def distance(a: bytes, b: bytes) -> float:
    """Mean absolute difference of grey thumbnails, 0 (same) .. 1."""
    return float(np.abs(thumbnail(a) - thumbnail(b)).mean())


def verified_pngs(request: ImageRequest, response: ImageResponse, pngs: list[bytes]
                  ) -> list[np.ndarray]:
    """The grey thumbnails of the full PNGs a miner sent for its answer by reference, once each
    is its proof's (``png_digest``), of the request's size (the header read before any pixel,
    decoding bounded by it), decodes, and its proof's thumbnail is of it (within
    THUMBNAIL_MATCH); else OpeningProblem, the miner's failure."""
    if not len(pngs) == len(response.proofs) == request.num_images:
        raise OpeningProblem(f"{len(pngs)} PNGs sent for {len(response.proofs)} committed and "
                             f"{request.num_images} requested")
    size, small = (request.width, request.height), (THUMBNAIL_PX, THUMBNAIL_PX)
    greys = []
    for b, (data, committed) in enumerate(zip(pngs, response.proofs)):
        if png_digest(data) != committed.sha256:
            raise OpeningProblem(f"image {b} does not match its sha256")
        try:
            grey = thumbnail(data, size)
            sent = thumbnail(base64.b64decode(committed.thumbnail, validate=True), small)
        except Exception as e:  # PIL, base64 and numpy raise many kinds: all the miner's doing
            raise OpeningProblem(f"image {b} does not decode: {type(e).__name__}: {e}"
                                 ) from None
        if (gap := float(np.abs(grey - sent).mean())) > THUMBNAIL_MATCH:
            raise OpeningProblem(f"image {b}'s thumbnail is {gap:.3f} from it "
                                 f"(tolerance {THUMBNAIL_MATCH})")
        greys.append(grey)
    return greys


def check_images(reference: DiffusersImages, request: ImageRequest, response: ImageResponse,
                 openings: Openings | None, max_distance: float = DISTANCE_MAX,
                 tolerance: float | None = STEP_TOLERANCE) -> Verdict:
    """The answer's verdict; ``openings`` is what the miner opened of the steps drawn after
    receipt (None: it opened nothing, or not in time). ``tolerance`` None: no re-run step is
    judged (a float16 GPU reference, whose honest step error is unmeasured and above the CPU's
    bound: float16 rounding of the latents alone moved steps by 1.5e-3, median); the openings
    must still open the commitment, and the images are regenerated whole and compared."""
    if response.units != request.units:
        return Verdict(False, f"charged {response.units} steps for {request.units} requested")
    if openings is None:
        return Verdict(False, "no trajectory opened (the miner did not answer the opening)")
    try:
        theirs = verified_pngs(request, response, openings.images)
    except OpeningProblem as e:
        return Verdict(False, f"images do not open ({e})"[:300])
    pipe = reference.pipeline
    latent = pipe.vae.config.latent_channels * (request.height // pipe.vae_scale_factor) * (
        request.width // pipe.vae_scale_factor) * 4
    try:
        n = verify_openings(request, response, openings, latent)
    except OpeningProblem as e:
        return Verdict(False, f"trajectory does not open ({e})"[:300])
    if tolerance is None:  # re-run steps cannot be judged here: the whole image, regenerated
        worst = max(float(np.abs(t - thumbnail(ours)).mean())
                    for t, ours in zip(theirs, reference.generate(request)))
        if worst > max_distance:
            return Verdict(False, f"images differ from the reference's by {worst:.3f} "
                                  f"(tolerance {max_distance})")
        return Verdict(True)
    redone = replay(reference, request, openings, n)
    if redone.steps_run != n:
        return Verdict(False, f"committed {n} steps; the pipeline runs {redone.steps_run}")
    for step, error in sorted(redone.errors.items()):
        if not error <= tolerance:  # NaN fails too
            return Verdict(False, f"step {step} re-runs {error:.3g} away "
                                  f"(tolerance {tolerance})")
    worst = max(float(np.abs(t - grey_thumbnail(ours)).mean())
                for t, ours in zip(theirs, redone.images))
    if worst > max_distance:
        return Verdict(False, f"images differ from their final latent by {worst:.3f} "
                              f"(tolerance {max_distance})")
    return Verdict(True)
