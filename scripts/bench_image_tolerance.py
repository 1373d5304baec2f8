"""The image checker's tolerance, measured (docs/protocol.md §8): honest images and cheating ones,
each compared with the reference's regeneration by the checker's distance (mean absolute
difference of 32x32 grey thumbnails), and judged at the checker's bound and at others; each
figure a line `name: value unit`.

The honest miner serves on ``--device`` (float16 on CUDA, as the diffusers back end loads; float32
on the CPU); the reference regenerates on ``--reference-device`` (``--check gpu`` loads float16 on
CUDA). Cheats: half the steps charged for all of them, another model of the same shape (other
weights), and another seed than asked (what the distance must tell apart to be a check at all).
Requests are drawn like the validator's synthetic ones, text-to-image, image-to-image and
inpaint, at ``--size`` pixels (the tiny pipeline; production is 1024 with the real checkpoints).

    python scripts/bench_image_tolerance.py --device cuda --reference-device cuda [--requests 60]
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BOUNDS = (0.01, 0.02, 0.04, 0.08)
TASKS = ("proteus-text-to-image", "proteus-image-to-image", "inpaint")


def draw_requests(n: int, size: int, seed: int):
    from core.validator.synthetic import synthetic_request

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


def main() -> None:
    from core.cli import parser

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=60, help="requests per kind of answer")
    p.add_argument("--size", type=int, default=128, help="image width and height in pixels")
    p.add_argument("--device", default="cpu", help="where the honest and cheating miners run")
    p.add_argument("--reference-device", default="cpu", help="where the reference regenerates")
    p.add_argument("--quick", action="store_true", help="a few requests: that it runs (tests)")
    a = p.parse_args()
    n = 3 if a.quick else a.requests
    size = 64 if a.quick else a.size

    from core.backends.diffusers_images import DiffusersImages
    from core.checking.images import DISTANCE_MAX, distance

    requests = draw_requests(n, size, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        model, other = Path(tmp) / "model", Path(tmp) / "other"
        DiffusersImages.tiny_pipeline(1234).save_pretrained(str(model))
        DiffusersImages.tiny_pipeline(999).save_pretrained(str(other))
        honest, wrong = engines(model, a.device), engines(other, a.device)
        reference = engines(model, a.reference_device)

        def serve(engine, request, **change):
            return engine[request.task].generate(request.model_copy(update=change))[0]

        expected = [serve(reference, r) for r in requests]
        kinds = {
            "honest": [serve(honest, r) for r in requests],
            "cheat_half_steps": [serve(honest, r, steps=max(1, r.steps // 2)) for r in requests],
            "cheat_other_model": [serve(wrong, r) for r in requests],
            "cheat_other_seed": [serve(honest, r, seed=r.seed + 1) for r in requests],
        }
    print(f"# miner on {a.device}, reference on {a.reference_device}, {size}x{size} pixels")
    print(f"images_per_kind: {n} count")
    for kind, images in kinds.items():
        found = sorted(distance(x, y) for x, y in zip(images, expected))
        print(f"{kind}_distance_p50: {statistics.median(found):.4f} share")
        print(f"{kind}_distance_max: {found[-1]:.4f} share")
        for bound in BOUNDS:
            print(f"{kind}_failed_at_{bound}: {sum(d > bound for d in found) / n:.4f} share")
        for task in TASKS:
            worst = max(distance(x, y) for x, y, r in zip(images, expected, requests)
                        if r.task == task)
            print(f"{kind}_{task.replace('-', '_')}_distance_max: {worst:.4f} share")
        name = "rule_false_fails" if kind == "honest" else f"rule_catches_{kind}"
        print(f"{name}: {sum(d > DISTANCE_MAX for d in found) / n:.4f} share")


if __name__ == "__main__":
    main()
