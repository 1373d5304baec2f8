"""Images on diffusers: one pipeline's components serve text-to-image, image-to-image and
inpaint, with the request's seed and steps. The same class loads production checkpoints on CUDA
and the tiny pipeline on the CPU."""

from __future__ import annotations

import base64
import io

import torch
from PIL import Image

from core.protocol import ImageRequest, ImageToImageRequest, InpaintRequest
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


class DiffusersImages:
    def __init__(self, pipeline, kind: Kind):
        from diffusers import (
            AutoPipelineForImage2Image,
            AutoPipelineForInpainting,
            AutoPipelineForText2Image,
        )

        self.kind = kind
        family = {  # from_pipe shares the weights and picks the SD or SDXL variant itself
            Kind.TEXT_TO_IMAGE: AutoPipelineForText2Image,
            Kind.IMAGE_TO_IMAGE: AutoPipelineForImage2Image,
            Kind.INPAINT: AutoPipelineForInpainting,
        }[kind]
        self.pipeline = family.from_pipe(pipeline)
        self.pipeline.set_progress_bar_config(disable=True)

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

    @torch.inference_mode()
    def generate(self, request: ImageRequest) -> list[bytes]:
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
        return [png(image) for image in self.pipeline(**args).images]
