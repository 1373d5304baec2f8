"""The image checker measured (docs/protocol.md §8): honest answers and cheating ones, each checked
as the validator checks it (trajectory opened at step 0 and K_STEPS drawn steps, each re-run
alone; the final latent decoded and compared with the PNG), with their catch rates and counts;
each figure a line `name: value unit`.

Cheats: half the steps, two ways: ``half_steps_forged`` runs a schedule of half the steps and
commits it interleaved with made-up latents (midpoints) to the asked count, and
``half_steps_cached`` runs the asked schedule but the UNet on every other step only, reusing the
last noise prediction in between (what a cheater who knows step 0 is always opened does); both
open what they committed. Then another scheduler (DPM-Solver++ multistep), another seed than
asked, another model (other weights), a decompression bomb (a 74-byte PNG whose header claims
20000x20000) and a valid PNG of the wrong size (16x16), each committed (its sha256) and sent when
opened. Then answers by reference whose PNGs are not what they proved: another PNG sent than
committed (``swap_png``), none sent (``withhold_png``), a thumbnail of another image
(``wrong_thumbnail``). The check's seconds are set against a full regeneration's, the same
requests on the same machine in the same run.

Then answers that commit and open their honest trajectory but deliver an altered copy of its image
(committed as sent: its sha256 and its RGB thumbnail), each caught by the comparison of the PNG
with the reference's decode of the miner's final latent (full-resolution RGB: the mean and the
worst 8x8 block's mean of the per-channel difference) or not: the colour gone (``greyscale``),
negated at the same luma (``chroma_negated``), red and blue swapped (``red_blue_swap``), a black
box over 4% (``black_box``), red spam text over the whole image (``spam_text``), a 1-px +-60
checkerboard (``checkerboard``); for each, the smallest of the two measures and of the 32x32 RGB
thumbnail distance ``--check gpu`` judges by. The honest figures beside them: the same measures
for honest answers (0 when miner and reference decode alike), and the decode's numerical noise
stressed by rounding the final latent to float16 before decoding (``honest_fp16_latent_*``).

The honest miner serves on ``--device`` (float16 on CUDA, as the diffusers back end loads; float32
on the CPU); the reference re-runs on ``--reference-device``. Requests are drawn like the
validator's synthetic ones (8-24 steps), text-to-image, image-to-image and inpaint, at ``--size``
pixels (the tiny pipeline).

    python scripts/bench_image_tolerance.py [--requests 30] [--honest 90] [--size 64]
"""

from __future__ import annotations

import base64
import io
import math
import random
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TASKS = ("proteus-text-to-image", "proteus-image-to-image", "inpaint")


def draw_requests(n: int, size: int, seed: int):
    from core.synthetic import synthetic_request

    rng = random.Random(seed)
    # image requests never count a prompt: no counter needed
    return [synthetic_request(TASKS[i % len(TASKS)], rng.randint(8, 24), rng, size, None)
            for i in range(n)]


def engines(folder: Path, device: str):
    """One engine per task on the pipeline saved in ``folder``, loaded as production loads."""
    from core.backends.diffusers_images import DiffusersImages
    from core.tasks import TASKS as TABLE

    return {t: DiffusersImages.from_pretrained(str(folder), TABLE[t].kind, device=device)
            for t in TASKS}


def bomb() -> bytes:
    """74 bytes of PNG whose IHDR claims 20000x20000 (the data decompresses to ~400 MB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    head = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", b"\x78\x9c") + chunk(
        b"IEND", b"")


def small_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


class Forger:
    """A cheater's own store of the latents it committed, opened as an honest store is."""

    def __init__(self):
        from core.backends.diffusers_images import Trajectories

        self.kept = Trajectories()

    def commit(self, request, images: list[bytes], steps: list):
        """An answer committing ``steps`` (the batch's latents, one tensor per step)."""
        from PIL import Image

        from core.backends.diffusers_images import latent_bytes, proof
        from core.protocol import ImageResponse, commitment_key, latent_digest

        trajectory = [[latent_digest(latent_bytes(s[b])) for s in steps]
                      for b in range(request.num_images)]
        self.kept.keep(commitment_key(trajectory), steps, images)
        return ImageResponse(proofs=[proof(Image.open(io.BytesIO(i)), i) for i in images],
                             units=request.units, trajectory=trajectory)


class Sending:
    """A miner's store that opens its latents honestly and sends ``pngs(kept PNGs)`` as the
    images: another PNG than it committed, none, or the one it committed falsely."""

    def __init__(self, store, pngs):
        self.store, self.pngs = store, pngs

    def open(self, key: str, latents: list[int]):
        opened = self.store.open(key, latents)
        return None if opened is None else (opened[0], self.pngs(opened[1]))


def inverted(png: bytes) -> bytes:
    """Another PNG of the same size: the image's colours inverted."""
    from PIL import Image, ImageOps

    out = io.BytesIO()
    ImageOps.invert(Image.open(io.BytesIO(png)).convert("RGB")).save(out, format="PNG")
    return out.getvalue()


def edited(png: bytes, kind: str) -> bytes:
    """The PNG altered as the cheat ``kind`` alters it."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.open(io.BytesIO(png)).convert("RGB")
    a = np.asarray(image, dtype=np.float32)
    w, h = image.size
    if kind == "greyscale":
        image = image.convert("L").convert("RGB")
    elif kind == "chroma_negated":
        luma = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        image = Image.fromarray(np.clip(2 * luma[..., None] - a, 0, 255).astype(np.uint8))
    elif kind == "red_blue_swap":
        image = Image.fromarray(a[..., ::-1].astype(np.uint8))
    elif kind == "black_box":
        ImageDraw.Draw(image).rectangle([0, 0, w // 5 - 1, h // 5 - 1], fill=(0, 0, 0))
    elif kind == "spam_text":
        draw = ImageDraw.Draw(image)
        for row in range(0, h, 24):
            draw.text((4, row), "BUY SCAMCOIN evil.example " * 3, fill=(255, 0, 0))
    elif kind == "checkerboard":
        board = ((np.indices((h, w)).sum(0) % 2) * 2 - 1)[..., None] * 60
        image = Image.fromarray(np.clip(a + board, 0, 255).astype(np.uint8))
    else:
        raise ValueError(kind)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


EDITS = ("greyscale", "chroma_negated", "red_blue_swap", "black_box", "spam_text",
         "checkerboard")


def decode_latent(engine, latent):
    """The engine's VAE decode of a batch latent, as the pipeline decodes it (PIL images)."""
    import torch

    pipe = engine.pipeline
    with torch.inference_mode():
        x = pipe.vae.decode(latent / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(x, output_type="pil")


def run_recording(engine, request, **extra):
    """PNGs and the batch latent after each step of ``engine``'s pipeline for ``request``."""
    import torch

    from core.backends.diffusers_images import png

    steps: list = []

    def record(pipe, i, t, tensors):
        steps.append(tensors["latents"].detach().clone())
        return {}

    with torch.inference_mode():
        images = engine.pipeline(**engine.arguments(request), callback_on_step_end=record,
                                 callback_on_step_end_tensor_inputs=["latents"], **extra).images
    return [png(i) for i in images], steps


def forged_half(engine, request, forger: Forger):
    """Half the steps' schedule, interleaved with midpoints up to the asked count; the images
    decoded from the last (what the cheater serves)."""
    from core.protocol import pipeline_steps

    n = pipeline_steps(request)
    images, half = run_recording(engine, request.model_copy(update={"steps": request.steps // 2}))
    m = len(half)
    steps = []
    for i in range(1, n + 1):  # latent i of n sits at i * m / n of the computed ones
        x = i * m / n
        lo, hi = max(math.floor(x), 1), max(math.ceil(x), 1)
        steps.append(half[lo - 1] if lo == hi else (half[lo - 1] + half[hi - 1]) / 2)
    return forger.commit(request, images, steps)


def cached_half(engine, request, forger: Forger):
    """The asked schedule with the UNet run on every other step, its last noise prediction
    reused in between: half the UNet's work, step 0 real."""
    from devtools.cheats import every_other_unet_call

    with every_other_unet_call(engine.pipeline.unet):
        images, steps = run_recording(engine, request)
    return forger.commit(request, images, steps)


def other_scheduler(engine, request, forger: Forger):
    from diffusers import DPMSolverMultistepScheduler

    pipe = engine.pipeline
    original = pipe.scheduler
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(original.config)
    try:
        images, steps = run_recording(engine, request)
    finally:
        pipe.scheduler = original
    return forger.commit(request, images, steps)


def open_answer(store, request, response, steps):
    """What the miner's ``store`` (an engine's or a forger's Trajectories) opens of ``steps``."""
    from core.checking.trajectory import Openings, latents_needed
    from core.protocol import commitment_key

    if not response.trajectory:
        return None
    asked = latents_needed(steps, len(response.trajectory[0]))
    opened = store.open(commitment_key(response.trajectory), asked)
    return None if opened is None else Openings(steps, dict(zip(asked, opened[0])), opened[1])


def main() -> None:
    from core.cli import parser

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=30, help="requests per kind of cheat")
    p.add_argument("--honest", type=int, default=90, help="honest answers checked")
    p.add_argument("--full", type=int, default=10,
                   help="honest and cached-cheat answers also re-run at every step (errors)")
    p.add_argument("--size", type=int, default=64, help="image width and height in pixels")
    p.add_argument("--device", default="cpu", help="where the honest and cheating miners run")
    p.add_argument("--reference-device", default="cpu", help="where the reference re-runs")
    p.add_argument("--seed", type=int, default=0, help="draws the requests and checked steps")
    p.add_argument("--quick", action="store_true", help="a few requests: that it runs (tests)")
    a = p.parse_args()
    n = 3 if a.quick else a.requests
    n_honest = 3 if a.quick else a.honest
    if a.quick:
        a.full = 1
    size = 64 if a.quick else a.size

    import numpy as np

    from core.backends.diffusers_images import DiffusersImages
    from core.checking.images import (
        check_images,
        colour,
        decoded,
        differences,
        distance,
        pixels,
        thumbnail,
    )
    from core.checking.trajectory import K_STEPS, STEP_TOLERANCE, pick_steps, replay
    from core.protocol import commitment_key, pipeline_steps, png_digest

    requests = draw_requests(n, size, seed=a.seed)
    honest_requests = draw_requests(n_honest, size, seed=a.seed + 2)
    rng = random.Random(a.seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        model, other = Path(tmp) / "model", Path(tmp) / "other"
        DiffusersImages.tiny_pipeline(1234).save_pretrained(str(model))
        DiffusersImages.tiny_pipeline(999).save_pretrained(str(other))
        honest, wrong = engines(model, a.device), engines(other, a.device)
        reference = engines(model, a.reference_device)
    forger = Forger()

    def served(r):
        return honest[r.task].answer(r), honest[r.task].trajectories

    def sending(r, pngs):
        """An honest answer whose opening sends ``pngs(kept PNGs)``."""
        answer, store = served(r)
        return answer, Sending(store, pngs)

    def committing(r, png: bytes):
        """An answer that commits ``png`` (its sha256) for every image, and sends it."""
        answer, store = sending(r, lambda kept: [png] * len(kept))
        proofs = [p.model_copy(update={"sha256": png_digest(png)}) for p in answer.proofs]
        return answer.model_copy(update={"proofs": proofs}), store

    def other_thumbnails(r):
        answer, store = served(r)
        proofs = [p.model_copy(update={"thumbnail": base64.b64encode(inverted(
            base64.b64decode(p.thumbnail))).decode()}) for p in answer.proofs]
        return answer.model_copy(update={"proofs": proofs}), store

    def altered(r, kind):
        """The honest trajectory committed and opened; its PNGs altered (``edited``) and
        committed as sent."""
        from PIL import Image

        from core.backends.diffusers_images import proof

        answer, store = served(r)
        opened = store.open(commitment_key(answer.trajectory), [])
        assert opened is not None
        pngs = [edited(p, kind) for p in opened[1]]
        proofs = [proof(Image.open(io.BytesIO(p)), p) for p in pngs]
        return (answer.model_copy(update={"proofs": proofs}),
                Sending(store, lambda kept: [edited(p, kind) for p in kept]))

    cheats = {
        "half_steps_forged": lambda r: (forged_half(honest[r.task], r, forger), forger.kept),
        "half_steps_cached": lambda r: (cached_half(honest[r.task], r, forger), forger.kept),
        "other_scheduler": lambda r: (other_scheduler(honest[r.task], r, forger), forger.kept),
        "other_seed": lambda r: (honest[r.task].answer(r.model_copy(update={"seed": r.seed + 1})),
                                 honest[r.task].trajectories),
        "other_model": lambda r: (wrong[r.task].answer(r), wrong[r.task].trajectories),
        "bomb": lambda r: committing(r, bomb()),
        "wrong_size": lambda r: committing(r, small_png()),
        # answers by reference whose PNGs are not what they proved
        "swap_png": lambda r: sending(r, lambda kept: [inverted(p) for p in kept]),
        "withhold_png": lambda r: sending(r, lambda kept: []),
        "wrong_thumbnail": other_thumbnails,
    }
    for kind in EDITS:  # the honest trajectory, an altered copy of its image
        cheats[kind] = (lambda k: lambda r: altered(r, k))(kind)
    for r in requests[:len(TASKS)]:  # first calls are slower (allocations, kernel choice)
        reference[r.task].generate(r)
    # CPU seconds of this process, not wall time: other work on the machine inflates wall time
    # of both unevenly
    check_s, regenerate_s, honest_fails, honest_distance = [], [], 0, 0.0
    honest_error = opened_share = 0.0
    honest_mean = honest_block = stress_mean = stress_block = 0.0
    for r in honest_requests:
        answer, store = served(r)
        steps = pick_steps(answer, rng)
        opened_share += len(steps) / pipeline_steps(r) / n_honest
        openings = open_answer(store, r, answer, steps)
        began = time.process_time()
        verdict = check_images(reference[r.task], r, answer, openings)
        check_s.append(time.process_time() - began)
        began = time.process_time()
        regenerated = reference[r.task].generate(r)
        regenerate_s.append(time.process_time() - began)
        honest_fails += not verdict.passed
        assert openings is not None
        honest_distance = max(honest_distance, max(
            distance(x, y) for x, y in zip(openings.images, regenerated)))
        for x, y in zip(openings.images, regenerated):
            mean, block = differences(decoded(x), decoded(y))
            honest_mean, honest_block = max(honest_mean, mean), max(honest_block, block)
        if r in honest_requests[:a.full]:  # every step re-run: the honest error's max
            every = tuple(range(pipeline_steps(r)))
            full = open_answer(store, r, answer, every)
            assert full is not None
            honest_error = max(honest_error, *replay(reference[r.task], r, full, len(every))
                               .errors.values())
            # the decode's numerical noise, stressed: the final latent rounded to float16
            final = run_recording(reference[r.task], r)[1][-1]
            exact = decode_latent(reference[r.task], final)
            rounded = decode_latent(reference[r.task], final.half().float())
            for x, y in zip(exact, rounded):
                mean, block = differences(pixels(x), pixels(y))
                stress_mean, stress_block = max(stress_mean, mean), max(stress_block, block)
    print(f"# miner on {a.device}, reference on {a.reference_device}, {size}x{size} pixels, "
          f"{K_STEPS} drawn steps + step 0, step tolerance {STEP_TOLERANCE}")
    print(f"images_per_kind: {n} count")
    print(f"honest_count: {n_honest} count")
    print(f"honest_false_fails: {honest_fails / n_honest:.4f} share")
    print(f"honest_false_fails_upper_95: {min(1.0, 3 / n_honest):.4f} share")
    print(f"honest_distance_max: {honest_distance:.4f} share")
    print(f"honest_step_error_max: {honest_error:.3g} ratio")
    print(f"honest_pixel_mean_max: {honest_mean:.5f} share")
    print(f"honest_block_max: {honest_block:.5f} share")
    print(f"honest_fp16_latent_pixel_mean_max: {stress_mean:.5f} share")
    print(f"honest_fp16_latent_block_max: {stress_block:.5f} share")
    print(f"full_reruns: {min(a.full, n_honest)} count")
    print(f"check_cpu_seconds_mean: {sum(check_s) / n_honest:.4f} s")
    print(f"regenerate_cpu_seconds_mean: {sum(regenerate_s) / n_honest:.4f} s")
    print(f"check_over_regenerate: {sum(check_s) / sum(regenerate_s):.4f} ratio")
    print(f"steps_rerun_share_mean: {opened_share:.4f} share")

    faked_errors: list[float] = []
    for kind, cheat in cheats.items():
        caught, reasons = 0, set()
        smallest = [math.inf] * 4  # pixel mean, block, thumbnail distance, colour gap
        # quick: one request per altered image (the test's time limit)
        tried = requests[:1] if a.quick and kind in EDITS else requests
        for r in tried:
            answer, store = cheat(r)
            steps = pick_steps(answer, rng)
            openings = open_answer(store, r, answer, steps)
            verdict = check_images(reference[r.task], r, answer, openings)
            caught += not verdict.passed
            if kind in EDITS:  # against the honest PNGs (the reference's decode: honest 0)
                assert openings is not None and isinstance(store, Sending)
                kept = store.store.open(commitment_key(answer.trajectory), [])
                assert kept is not None
                for x, y in zip(openings.images, kept[1]):
                    ours = thumbnail(y)
                    gap = np.abs(colour(thumbnail(x)) - colour(ours)).mean()
                    figures = (*differences(decoded(x), decoded(y)), distance(x, y),
                               float(gap / max(np.abs(colour(ours)).mean(), 1e-9)))
                    smallest = [min(m, f) for m, f in zip(smallest, figures)]
            reasons.add(verdict.reason.split(" (")[0].split(" by ")[0][:40])
            if kind == "half_steps_cached" and r in requests[:a.full]:  # where reuse lands
                every = tuple(range(pipeline_steps(r)))
                full = open_answer(store, r, answer, every)
                assert full is not None
                errors = replay(reference[r.task], r, full, len(every)).errors
                faked_errors += [e for j, e in errors.items() if j % 2 == 1]
        print(f"{kind}_caught: {caught / len(tried):.4f} share")
        print(f"{kind}_count: {len(tried)} count")
        print(f"# {kind} reasons: {sorted(reasons)}")
        if kind in EDITS:
            print(f"{kind}_pixel_mean_min: {smallest[0]:.4f} share")
            print(f"{kind}_block_min: {smallest[1]:.4f} share")
            print(f"{kind}_thumbnail_rgb_min: {smallest[2]:.4f} share")
            print(f"{kind}_colour_gap_over_colour_min: {smallest[3]:.4f} ratio")
        if kind == "other_model":  # the name the earlier benchmark printed it under
            print(f"rule_catches_cheat_other_model: {caught / n:.4f} share")
    print(f"half_steps_cached_faked_step_error_min: {min(faked_errors):.3g} ratio")
    # with half the steps after step 0 faked, K_STEPS drawn without replacement all miss them
    worst = max(math.comb((m - 1) // 2, K_STEPS) / math.comb(m - 1, K_STEPS)
                if m - 1 > K_STEPS else 0.0 for m in map(pipeline_steps, requests))
    print(f"half_steps_miss_bound: {worst:.4f} share")


if __name__ == "__main__":
    main()
