"""Images on diffusers: one pipeline's components serve text-to-image, image-to-image and
inpaint, with the request's seed and steps. The same class loads production checkpoints on CUDA
and the tiny pipeline on the CPU."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from PIL import Image

from core.protocol import (
    THUMBNAIL_PX,
    ImageProof,
    ImageRequest,
    ImageResponse,
    ImageToImageRequest,
    InpaintRequest,
    TrajectoryRequest,
    TrajectoryResponse,
    commitment_key,
    latent_digest,
    png_digest,
)
from core.tasks import Kind


def decode_image(b64: str, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A request's base64 image, resized to the requested width x height; ValueError when it is
    not base64 or not an image."""
    try:
        raw = base64.b64decode(b64, validate=True)
        return Image.open(io.BytesIO(raw)).convert(mode).resize(size)
    except OSError as e:  # PIL's UnidentifiedImageError
        raise ValueError(f"not an image: {e}") from None


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def proof(image: Image.Image, data: bytes) -> ImageProof:
    """What an answer by reference says of ``image``, whose PNG file is ``data``."""
    thumb = image.convert("RGB").resize((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.BILINEAR)
    return ImageProof(sha256=png_digest(data), width=image.width, height=image.height,
                      thumbnail=base64.b64encode(png(thumb)).decode())


# The schedulers whose step depends only on the current latent, the noise prediction and the
# seeded generator, so that a checker re-runs any one step alone (core/checking/trajectory.py).
# Multistep ones (DPM-Solver, PNDM, LMS, UniPC) keep earlier predictions and cannot be.
ALLOWED_SCHEDULERS = frozenset({"DDIMScheduler", "EulerDiscreteScheduler"})
# A miner keeps its recent answers' latents and PNGs to open them (docs/protocol.md §8): a
# validator asks right after receipt. A production SDXL 1024 latent is 4x128x128 (256 KiB in
# float32, 128 KiB in float16 as CUDA keeps it), so a 30-step image is 3.75 MiB in float16, and
# its PNG 1-2 MB more; KEEP_BYTES holds ~190 such answers, far more than KEEP_S lets a busy miner
# need.
KEEP_ANSWERS, KEEP_S, KEEP_BYTES = 256, 120.0, 1 << 30


def latent_bytes(latent: torch.Tensor) -> bytes:
    """One image's latent as the protocol hashes it: contiguous little-endian float32."""
    return latent.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes()


@dataclass
class _Kept:
    steps: list[torch.Tensor]  # the batch's latents after each step, as the pipeline made them
    pngs: list[bytes]  # the full images, one PNG file each
    at: float

    @property
    def size(self) -> int:
        return (sum(t.numel() * t.element_size() for t in self.steps)
                + sum(len(p) for p in self.pngs))


class Trajectories:
    """Recent answers' latents and PNGs by commitment key, bounded in count, age and bytes
    (oldest out first). Generation threads add while the app's loop opens: one lock."""

    def __init__(self, count: int = KEEP_ANSWERS, seconds: float = KEEP_S,
                 size: int = KEEP_BYTES):
        self.count, self.seconds, self.size = count, seconds, size
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def keep(self, key: str, steps: list[torch.Tensor], pngs: list[bytes]) -> None:
        with self._lock:
            kept = _Kept(steps, pngs, time.monotonic())
            self._kept[key] = kept
            self._bytes += kept.size
            self._expire()

    def _expire(self) -> None:
        now = time.monotonic()
        while self._kept and (len(self._kept) > self.count or self._bytes > self.size
                              or now - next(iter(self._kept.values())).at > self.seconds):
            self._bytes -= self._kept.popitem(last=False)[1].size

    def open(self, key: str, latents: list[int]) -> tuple[list[list[bytes]], list[bytes]] | None:
        """Per asked latent (1 = after the first step), per image, its canonical bytes, and the
        answer's PNGs; None when the answer is not kept (never made, expired) or has fewer
        steps."""
        with self._lock:
            self._expire()
            kept = self._kept.get(key)
        if kept is None or max(latents, default=0) > len(kept.steps):
            return None
        return [[latent_bytes(image) for image in kept.steps[i - 1]] for i in latents], kept.pngs


_OPENINGS = ThreadPoolExecutor(1, thread_name_prefix="openings")  # byte copies, quick


class DiffusersImages:
    def __init__(self, pipeline, kind: Kind):
        from diffusers import (
            AutoPipelineForImage2Image,
            AutoPipelineForInpainting,
            AutoPipelineForText2Image,
            EulerDiscreteScheduler,
        )

        self.kind = kind
        family = {  # from_pipe shares the weights and picks the SD or SDXL variant itself
            Kind.TEXT_TO_IMAGE: AutoPipelineForText2Image,
            Kind.IMAGE_TO_IMAGE: AutoPipelineForImage2Image,
            Kind.INPAINT: AutoPipelineForInpainting,
        }[kind]
        self.pipeline = family.from_pipe(pipeline)
        self.pipeline.set_progress_bar_config(disable=True)
        if type(self.pipeline.scheduler).__name__ not in ALLOWED_SCHEDULERS:
            # the protocol's scheduler for a checkpoint that ships a multistep one: Euler from
            # its own configuration (SDXL's default)
            self.pipeline.scheduler = EulerDiscreteScheduler.from_config(
                self.pipeline.scheduler.config)
        self.trajectories = Trajectories()

    @staticmethod
    def tiny_pipeline(seed: int):
        from core.backends import tiny

        return tiny.image_pipeline(seed)

    @classmethod
    def from_pretrained(cls, model: str, kind: Kind, *, device: str = "cuda",
                        dtype: str = "auto") -> DiffusersImages:
        """Load a checkpoint (a local folder, or a hub id where the hub is reachable); ``auto``
        dtype is float16 on CUDA and float32 on the CPU."""
        from diffusers import AutoPipelineForText2Image

        if dtype == "auto":
            dtype = "float16" if device.startswith("cuda") else "float32"
        pipeline = AutoPipelineForText2Image.from_pretrained(model, dtype=getattr(torch, dtype))
        return cls(pipeline.to(device), kind)

    def arguments(self, request: ImageRequest) -> dict[str, object]:
        """The pipeline's arguments for ``request``, with a fresh generator of its seed (the
        checker's replay passes the same ones)."""
        size = (request.width, request.height)
        args: dict[str, object] = dict(
            prompt=request.prompt, negative_prompt=request.negative_prompt or None,
            num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
            num_images_per_prompt=request.num_images,
            generator=torch.Generator(device="cpu").manual_seed(request.seed),
        )
        if isinstance(request, (ImageToImageRequest, InpaintRequest)):
            args.update(image=decode_image(request.init_image, size), strength=request.strength)
        if isinstance(request, InpaintRequest):
            args.update(mask_image=decode_image(request.mask_image, size, "L"))
        if not isinstance(request, ImageToImageRequest):
            args.update(height=request.height, width=request.width)
        return args

    def generate(self, request: ImageRequest) -> list[bytes]:
        """PNG bytes, one per image (what a reference regenerates: nothing is kept)."""
        return [png(i) for i in self._run(request)[0]]

    @torch.inference_mode()
    def _run(self, request: ImageRequest) -> tuple[list[Image.Image], list[torch.Tensor]]:
        """The pipeline's images for ``request`` and its latents after every step."""
        steps: list[torch.Tensor] = []

        def record(pipe, i, t, tensors):
            steps.append(tensors["latents"].detach().to("cpu", copy=True))
            return {}

        images = self.pipeline(**self.arguments(request), callback_on_step_end=record,
                               callback_on_step_end_tensor_inputs=["latents"]).images
        return images, steps

    def answer(self, request: ImageRequest) -> ImageResponse:
        """The answer to ``request`` by reference: a proof of each image and the trajectory
        commitment, the PNGs and the latents after every step kept to be opened (``open``)."""
        images, steps = self._run(request)
        pngs = [png(i) for i in images]
        trajectory = [[latent_digest(latent_bytes(step[b])) for step in steps]
                      for b in range(len(images))]
        self.trajectories.keep(commitment_key(trajectory), steps, pngs)
        return ImageResponse(proofs=[proof(i, p) for i, p in zip(images, pngs)],
                             units=request.units, trajectory=trajectory)

    async def opening(self, request: TrajectoryRequest) -> TrajectoryResponse | None:
        """``open`` on a thread of its own: never queued behind generations and chat streams in
        the default pool (six chat streams delayed an opening 40 s there, past the validator's
        OPENING_TIMEOUT_S: a failed check for an honest miner)."""
        return await asyncio.get_running_loop().run_in_executor(_OPENINGS, self.open, request)

    def open(self, request: TrajectoryRequest) -> TrajectoryResponse | None:
        """The asked latents of a kept answer and its PNGs, or None when it is not kept."""
        opened = self.trajectories.open(request.key, request.latents)
        if opened is None:
            return None
        latents, pngs = opened
        return TrajectoryResponse(latents=[[base64.b64encode(b).decode() for b in step]
                                           for step in latents],
                                  images=[base64.b64encode(p).decode() for p in pngs])
