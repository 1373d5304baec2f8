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

# --check gpu (the image regenerated whole, float16): 32x32 RGB thumbnails, as shares of 255.
# Their mean absolute difference must be <= DISTANCE_MAX, and that of their colour (each pixel
# less its channels' mean) <= CHROMA_SHARE of the reference's colour (its mean absolute value),
# or CHROMA_FLOOR where the image has little colour: a greyscale copy differs by 1 share of it,
# a chroma-negated one by 2, a red/blue swap by about 1 (the tiny pipeline's images have little
# colour: there a greyscale copy is only >= 0.021 from the image in RGB at 256 px, under
# DISTANCE_MAX). Honest figures across GPU models are NOT measured (no GPU here); the same
# float16 CUDA miner and reference gave identical images on an H200.
DISTANCE_MAX = 0.04
CHROMA_SHARE = 0.5
CHROMA_FLOOR = 0.01
# --check cpu (the miner's own verified final latent decoded by the reference): the PNG against
# that decode at full resolution, per RGB channel, as a share of 255. Honest: 0 exactly (CPU
# float32 miner and reference, tiny pipeline, 64 and 256 px); the decode's numerical noise
# stressed by rounding the latent to float16 first: <= 0.00003 mean and <= 0.00022 in the worst
# 8x8 block. The bounds leave over 100x of margin; the cheats measured (greyscale, chroma
# negated, red/blue swapped, spam text, +-60 checkerboard: mean >= 0.05; a black box over 4%:
# mean >= 0.016, block >= 0.46) are each over 3x a bound (scripts/bench_image_tolerance.py).
PIXEL_MEAN_MAX = 0.005  # mean over every pixel and channel
BLOCK_MAX = 0.05  # the worst 8x8 block's mean: a local edit (a box, a logo, text)
BLOCK = 8
# the most an answer's thumbnail may differ from its full image at 32x32 RGB: resizing the PNG
# here and the miner's resizing are the same (PIL bilinear): honest 0 at 64 and at 512 px
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


def pixels(image: Image.Image) -> np.ndarray:
    """An image's RGB pixels, height x width x 3, as shares of 255 (float32)."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def rgb_thumbnail(image: Image.Image) -> np.ndarray:
    """The 32x32 RGB thumbnail (PIL bilinear), as the miner's proof makes it."""
    return pixels(image.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BILINEAR))


def decoded(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """A PNG's RGB pixels; with ``size``, a PNG of any other size is refused before its pixels
    are decoded (ValueError), so decoding is bounded by the request."""
    if size is not None and png_size(data) != size:
        raise ValueError(f"a {png_size(data)} PNG for a {size} request")
    with Image.open(io.BytesIO(data)) as image:
        if size is not None and image.size != size:  # what PIL read, not only the first bytes
            raise ValueError(f"a {image.size} image for a {size} request")
        return pixels(image)


def thumbnail_of(full: np.ndarray) -> np.ndarray:
    """``rgb_thumbnail`` of pixels ``decoded`` returned."""
    return rgb_thumbnail(Image.fromarray(np.rint(full * 255.0).astype(np.uint8)))


def thumbnail(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """The RGB 32x32 thumbnail of a PNG (``decoded``'s size rule)."""
    return thumbnail_of(decoded(data, size))


def distance(a: bytes, b: bytes) -> float:
    """Mean absolute difference of RGB 32x32 thumbnails, 0 (same) .. 1: --check gpu's measure."""
    return float(np.abs(thumbnail(a) - thumbnail(b)).mean())


def colour(thumb: np.ndarray) -> np.ndarray:
    """Each pixel's channels less their mean: what a greyscale copy loses."""
    return thumb - thumb.mean(axis=2, keepdims=True)


def whole_image_gap(theirs: np.ndarray, ours: np.ndarray, max_distance: float = DISTANCE_MAX
                    ) -> str | None:
    """Why two 32x32 RGB thumbnails differ beyond --check gpu's bounds, or None."""
    if (gap := float(np.abs(theirs - ours).mean())) > max_distance:
        return f"by {gap:.3f} (RGB thumbnails, tolerance {max_distance})"
    reference = float(np.abs(colour(ours)).mean())
    bound = max(CHROMA_FLOOR, CHROMA_SHARE * reference)
    if (gap := float(np.abs(colour(theirs) - colour(ours)).mean())) > bound:
        return (f"in colour by {gap:.3f} (the reference's colour {reference:.3f}, "
                f"tolerance {bound:.3f})")
    return None


def differences(theirs: np.ndarray, ours: np.ndarray) -> tuple[float, float]:
    """(mean, worst BLOCK x BLOCK block's mean) of the absolute per-channel difference of two
    images' full-resolution pixels: --check cpu's measures. An edge not filling a block is
    averaged as a block of its own."""
    if theirs.shape != ours.shape:
        return 1.0, 1.0
    diff = np.abs(theirs - ours).mean(axis=2)
    h, w = diff.shape
    pad = ((0, -h % BLOCK), (0, -w % BLOCK))
    hb, wb = (h + pad[0][1]) // BLOCK, (w + pad[1][1]) // BLOCK
    sums = np.pad(diff, pad).reshape(hb, BLOCK, wb, BLOCK).sum(axis=(1, 3))
    counts = np.pad(np.ones_like(diff), pad).reshape(hb, BLOCK, wb, BLOCK).sum(axis=(1, 3))
    return float(diff.mean()), float((sums / counts).max())


def verified_pngs(request: ImageRequest, response: ImageResponse, pngs: list[bytes]
                  ) -> list[np.ndarray]:
    """The RGB pixels (``decoded``) of the full PNGs a miner sent for its answer by reference,
    once each is its proof's (``png_digest``), of the request's size (the header read before any
    pixel, decoding bounded by it), decodes, and its proof's RGB thumbnail is of it (within
    THUMBNAIL_MATCH); else OpeningProblem, the miner's failure."""
    if not len(pngs) == len(response.proofs) == request.num_images:
        raise OpeningProblem(f"{len(pngs)} PNGs sent for {len(response.proofs)} committed and "
                             f"{request.num_images} requested")
    size, small = (request.width, request.height), (THUMBNAIL_PX, THUMBNAIL_PX)
    images = []
    for b, (data, committed) in enumerate(zip(pngs, response.proofs)):
        if png_digest(data) != committed.sha256:
            raise OpeningProblem(f"image {b} does not match its sha256")
        try:
            full = decoded(data, size)
            ours = thumbnail_of(full)
            sent = decoded(base64.b64decode(committed.thumbnail, validate=True), small)
            gap = float(np.abs(ours - sent).mean())
        except Exception as e:  # PIL, base64 and numpy raise many kinds: all the miner's doing
            raise OpeningProblem(f"image {b} does not decode: {type(e).__name__}: {e}"
                                 ) from None
        if gap > THUMBNAIL_MATCH:
            raise OpeningProblem(f"image {b}'s thumbnail is {gap:.3f} from it "
                                 f"(tolerance {THUMBNAIL_MATCH})")
        images.append(full)
    return images


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
        for b, (t, ours) in enumerate(zip(theirs, reference.generate(request))):
            if (why := whole_image_gap(thumbnail_of(t), thumbnail(ours), max_distance)):
                return Verdict(False, f"images differ from the reference's {why} (image {b})")
        return Verdict(True)
    redone = replay(reference, request, openings, n)
    if redone.steps_run != n:
        return Verdict(False, f"committed {n} steps; the pipeline runs {redone.steps_run}")
    for step, error in sorted(redone.errors.items()):
        if not error <= tolerance:  # NaN fails too
            return Verdict(False, f"step {step} re-runs {error:.3g} away "
                                  f"(tolerance {tolerance})")
    for b, (t, ours) in enumerate(zip(theirs, redone.images)):
        mean, block = differences(t, pixels(ours))
        if not mean <= PIXEL_MEAN_MAX:
            return Verdict(False, f"image {b} differs from its final latent by {mean:.4f} "
                                  f"(RGB mean, tolerance {PIXEL_MEAN_MAX})")
        if not block <= BLOCK_MAX:
            return Verdict(False, f"image {b} differs from its final latent by {block:.4f} "
                                  f"in a {BLOCK}x{BLOCK} block (tolerance {BLOCK_MAX})")
    return Verdict(True)
