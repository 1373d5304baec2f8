"""Trajectory commitments (docs/protocol.md §8): an image answer commits, per image, the sha256 of
its latent after every denoising step; after receipt the validator opens a few steps it draws and
re-runs each one alone with its reference pipeline. A miner that ran fewer steps, another
scheduler, another seed or another model has transitions that no step of the asked pipeline
makes, and each opened step finds one with the share of such steps.

Step 0 (from the pipeline's own seeded initial latents: noise, or the noised init image) is
always opened, since it ties the trajectory to the request's seed and init image; K_STEPS more
are drawn from the rest. With half the other steps made up, all K_STEPS miss them with
probability at most 2**-K_STEPS (0.8%): >= 99% caught per checked answer.

The re-run of one step works for any diffusers pipeline kind (text-to-image, image-to-image,
inpaint; SD and SDXL): the pipeline runs with a UNet that answers zeros (no cost) on the steps
not opened, the latents swapped for the miner's opened latent before each opened step, and that
step's result captured at its end; at the last step the latents become the miner's final one,
which the pipeline decodes as it decodes its own. This is exact only for schedulers whose step
depends on nothing but the current latent, the noise prediction and the seeded generator
(``ALLOWED_SCHEDULERS``: DDIM, as the tiny pipeline uses, and Euler, SDXL's default).
"""

from __future__ import annotations

import base64
import binascii
import random
import threading
from dataclasses import dataclass

import numpy as np

from core.errors import PeerFault
from core.protocol import (
    ImageRequest,
    ImageResponse,
    TrajectoryResponse,
    latent_digest,
    pipeline_steps,
)

K_STEPS = 7  # steps drawn besides step 0: 2**-7 < 1% of half-faked answers pass
# Largest accepted difference of a re-run step from the miner's, relative to the step's change
# (|ours - theirs| / |theirs - start|, L2). Measured on the CPU (tiny pipeline, float32,
# scripts/bench_image_tolerance.py): honest steps re-run exactly from noise and inpaint, and
# within 2.0e-5 from an init image (float rounding); a step faked by reusing the previous noise
# prediction, the subtlest cheat measured, lands 7.6e-4 away at its closest (late steps, where
# predictions change least) and 0.03-0.3 early. Between two GPU models in float16 the honest
# figure is unmeasured: it must be before this bound is used there.
STEP_TOLERANCE = 2e-4


@dataclass(frozen=True)
class Openings:
    """What a miner opened of one answer: the steps drawn (``pick_steps``) and, per latent
    index (1 = after the first step), per image, the latent's canonical bytes (little-endian
    float32, as its digest hashes them); the answer's full PNGs, as sent (nothing in them is
    trusted before ``core.checking.images.verified_pngs``)."""

    steps: tuple[int, ...]
    latents: dict[int, list[bytes]]
    images: list[bytes]


def pick_steps(response: ImageResponse, rng: random.Random) -> tuple[int, ...]:
    """Step 0 and K_STEPS others of the answer's committed steps, drawn by ``rng`` (the service
    draws with ``random.SystemRandom()``, after receipt: the miner cannot know them)."""
    n = len(response.trajectory[0]) if response.trajectory else 1
    return (0, *sorted(rng.sample(range(1, n), min(K_STEPS, n - 1))))


def latents_needed(steps: tuple[int, ...], n: int) -> list[int]:
    """The latents that open ``steps`` of an ``n``-step trajectory: each step's start (but the
    pipeline's own initial latents) and end, and the final latent."""
    return sorted({j for j in steps if j > 0} | {j + 1 for j in steps} | {n})


class OpeningProblem(PeerFault):
    """Openings that do not open the commitment: the miner's failure."""


def openings_of(steps: tuple[int, ...], asked: list[int], answer: TrajectoryResponse
                ) -> Openings:
    """The miner's answer to an opening of ``asked`` latents, decoded; OpeningProblem when it
    is not one latent list per asked index in base64, or its PNGs are not base64."""
    if len(answer.latents) != len(asked):
        raise OpeningProblem(f"{len(answer.latents)} latents for {len(asked)} asked")
    try:
        latents = {i: [base64.b64decode(x, validate=True) for x in images]
                   for i, images in zip(asked, answer.latents)}
        pngs = [base64.b64decode(x, validate=True) for x in answer.images]
    except binascii.Error as e:
        raise OpeningProblem(f"latents or images are not base64: {e}") from None
    return Openings(steps, latents, pngs)


def opened_in_process(engine, request: ImageRequest, response: ImageResponse,
                      steps: tuple[int, ...]) -> Openings:
    """What an engine in this process (``DiffusersImages.open``) opens of ``steps``: the
    openings its miner would send, without the wire (benchmarks and tests); OpeningProblem
    when it kept no such answer."""
    from core.protocol import TrajectoryRequest, commitment_key

    asked = latents_needed(steps, len(response.trajectory[0]))
    answer = engine.open(TrajectoryRequest(task=request.task, latents=asked,
                                           key=commitment_key(response.trajectory)))
    if answer is None:
        raise OpeningProblem("the engine keeps no such answer")
    return openings_of(steps, asked, answer)


def verify_openings(request: ImageRequest, response: ImageResponse, openings: Openings,
                    latent_size: int) -> int:
    """The step count, once the commitment has the pipeline's and every needed latent was opened
    with ``latent_size`` bytes, finite, and hashing to its digest; else OpeningProblem."""
    n = pipeline_steps(request)
    lengths = {len(t) for t in response.trajectory}
    if len(response.trajectory) != request.num_images or lengths != {n}:
        raise OpeningProblem(f"committed {sorted(lengths) or 'no'} steps for "
                             f"{len(response.trajectory)} images; the pipeline runs {n} for "
                             f"{request.num_images}")
    if not openings.steps or max(openings.steps) >= n or min(openings.steps) != 0:
        raise OpeningProblem(f"opened steps {openings.steps} of {n}")
    for i in latents_needed(openings.steps, n):
        images = openings.latents.get(i)
        if images is None or len(images) != request.num_images:
            raise OpeningProblem(f"latent {i} not opened")
        for b, raw in enumerate(images):
            if len(raw) != latent_size:
                raise OpeningProblem(f"latent {i} has {len(raw)} bytes, not {latent_size}")
            if latent_digest(raw) != response.trajectory[b][i - 1]:
                raise OpeningProblem(f"latent {i} of image {b} does not match its digest")
            if not np.isfinite(np.frombuffer(raw, "<f4")).all():
                raise OpeningProblem(f"latent {i} of image {b} is not finite")
    return n


@dataclass(frozen=True)
class Replayed:
    """The reference's re-run: per opened step, its largest relative error over the images;
    the steps the pipeline ran; the images it decoded from the miner's final latent."""

    errors: dict[int, float]
    steps_run: int
    images: list  # PIL images


_patching = threading.Lock()  # one replay at a time patches a (shared) UNet's forward


def replay(reference, request: ImageRequest, openings: Openings, n: int) -> Replayed:
    """Run ``reference``'s pipeline for ``request`` re-running only the opened steps, each from
    the miner's opened latent, and decoding the miner's final latent (module docstring)."""
    import torch

    pipe = reference.pipeline
    scheduler = type(pipe.scheduler).__name__
    from core.backends.diffusers_images import ALLOWED_SCHEDULERS

    if scheduler not in ALLOWED_SCHEDULERS:  # the validator's own setup: not the miner's fault
        raise RuntimeError(f"the reference's {scheduler} cannot re-run one step alone")
    steps = set(openings.steps)
    shape = (request.num_images, pipe.vae.config.latent_channels,
             request.height // pipe.vae_scale_factor, request.width // pipe.vae_scale_factor)

    def opened(i: int, like: torch.Tensor) -> torch.Tensor:
        batch = np.stack([np.frombuffer(raw, "<f4") for raw in openings.latents[i]])
        return torch.from_numpy(batch.reshape(shape)).to(like.device, like.dtype)

    real = {"now": 0 in steps}
    errors: dict[int, float] = {}
    ran = 0
    unet, sampler = pipe.unet, pipe.scheduler
    forward, step = unet.forward, sampler.step
    start: list[torch.Tensor] = []  # the latents the current step began from

    def cheap(sample, *args, **kwargs):
        if real["now"]:
            return forward(sample, *args, **kwargs)
        return (torch.zeros_like(sample),)  # pipelines call the UNet with return_dict=False

    def stepping(model_output, timestep, sample, *args, **kwargs):
        start[:] = [sample]
        return step(model_output, timestep, sample, *args, **kwargs)

    def step_end(_pipe, i, _t, tensors):
        nonlocal ran
        ran += 1
        latents = tensors["latents"]
        if i in steps and i + 1 <= n:
            theirs, ours, began = opened(i + 1, latents).float(), latents.float(), start[0].float()
            for b in range(request.num_images):
                change = (theirs[b] - began[b]).norm().clamp_min(1e-12)
                err = float((ours[b] - theirs[b]).norm() / change)
                errors[i] = max(errors.get(i, 0.0), err)
        real["now"] = i + 1 in steps
        if i + 1 in steps or i + 1 == n:
            return {"latents": opened(i + 1, latents)}
        return {}

    with _patching, torch.inference_mode():
        unet.forward, sampler.step = cheap, stepping
        try:
            images = pipe(**reference.arguments(request), callback_on_step_end=step_end,
                          callback_on_step_end_tensor_inputs=["latents"]).images
        finally:
            del unet.forward, sampler.step  # the classes' methods again
    return Replayed(errors, ran, images)
