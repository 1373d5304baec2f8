"""Bytes per synthetic image answer, before and after answers by reference (docs/protocol.md §8):
protocol 7 answered every image request with its PNGs (base64) and the trajectory commitment;
protocol 8 answers with a proof per image (the PNG's sha256, its size, a 32x32 thumbnail) and the
commitment, and the validator fetches the PNGs only for organic traffic and the answers it opens
(checked ones, and as many decoys). Each figure a line `name: value unit`.

Measured at ``--size`` pixels (64: the tiny CPU pipeline) over synthetic requests of each image
kind, the JSON bodies as the miner sends them. Computed for 1024 pixels, where no production
model runs here: the answer by reference is the same proof (its thumbnail is 32x32 whatever the
image's size: the largest measured one is taken) with ``--steps-1024`` digests; protocol 7's
answer is that commitment plus a PNG of ``--png-1024`` bytes (SDXL's 1024-px PNGs are 1-2 MB;
a stored, uncompressed 1024x1024 RGB PNG, the most an honest encoder writes, is printed too).

    python scripts/bench_image_bytes.py [--requests 12] [--size 64] [--quick]
"""

from __future__ import annotations

import base64
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TASKS = ("proteus-text-to-image", "proteus-image-to-image", "inpaint")


def protocol_7_bytes(units: int, trajectory: list[list[str]], pngs: list[bytes]) -> int:
    """The body protocol 7's miner sent: the PNGs inline, as compact JSON (pydantic's)."""
    body = {"version": "7.0.0", "images": [base64.b64encode(p).decode() for p in pngs],
            "units": units, "trajectory": trajectory}
    return len(json.dumps(body, separators=(",", ":")))


def stored_png_bytes(width: int, height: int) -> int:
    """An RGB PNG stored without compression: signature, IHDR, IDAT of zlib stored blocks (5
    bytes per 65,535), IEND."""
    raw = height * (1 + 3 * width)
    return 8 + 25 + 12 + 2 + raw + 5 * -(-raw // 65535) + 4 + 12


def main() -> None:
    from core.cli import parser

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=12, help="synthetic requests measured")
    p.add_argument("--size", type=int, default=64, help="image width and height in pixels")
    p.add_argument("--png-1024", type=int, default=1_500_000,
                   help="bytes of a production 1024-px PNG, for the computed figures")
    p.add_argument("--steps-1024", type=int, default=50,
                   help="steps a 1024-px synthetic request commits (the task table's most)")
    p.add_argument("--quick", action="store_true", help="3 requests: that it runs (tests)")
    a = p.parse_args()
    n = 3 if a.quick else a.requests

    from core.backends import load_engine
    from core.checking.trajectory import latents_needed, pick_steps
    from core.protocol import (
        ImageProof,
        ImageResponse,
        TrajectoryRequest,
        commitment_key,
        png_digest,
    )
    from core.synthetic import synthetic_request
    from core.tasks import TASKS as TABLE

    engines = {t: load_engine(t) for t in TASKS}
    rng = random.Random(0)
    before = after = checked = organic = 0
    largest: ImageProof | None = None
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        request = synthetic_request(task, TABLE[task].units_per_synthetic, rng, a.size, None)
        engine = engines[task]
        answer = engine.answer(request)
        key = commitment_key(answer.trajectory)
        asked = latents_needed(pick_steps(answer, rng), len(answer.trajectory[0]))
        opened = engine.open(TrajectoryRequest(task=task, key=key, latents=asked))
        pngs_only = engine.open(TrajectoryRequest(task=task, key=key, latents=[]))
        assert opened is not None and pngs_only is not None
        after += len(answer.model_dump_json())
        before += protocol_7_bytes(answer.units, answer.trajectory,
                                   [base64.b64decode(x) for x in pngs_only.images])
        checked += len(opened.model_dump_json())
        organic += len(pngs_only.model_dump_json())
        largest = max([largest, *answer.proofs], key=lambda x: len(x.thumbnail) if x else -1)
    assert largest is not None
    print(f"# {n} synthetic requests of {', '.join(TASKS)} at {a.size}x{a.size} pixels "
          f"(tiny pipeline); 1024 px computed with a {a.png_1024:,}-byte PNG and "
          f"{a.steps_1024} steps")
    print(f"answers: {n} count")
    print(f"before_bytes_per_answer_{a.size}px: {before / n:.0f} bytes")
    print(f"after_bytes_per_answer_{a.size}px: {after / n:.0f} bytes")
    print(f"after_over_before_{a.size}px: {after / before:.4f} ratio")
    # what an opened answer costs besides: the PNGs and 8 drawn steps' latents (checked answers
    # and as many decoys), the PNGs alone (organic answers)
    print(f"opening_bytes_checked_{a.size}px: {checked / n:.0f} bytes")
    print(f"opening_bytes_organic_{a.size}px: {organic / n:.0f} bytes")

    trajectory = [[png_digest(bytes([s])) for s in range(a.steps_1024)]]
    proof = largest.model_copy(update={"width": 1024, "height": 1024})
    after_1024 = len(ImageResponse(proofs=[proof], units=a.steps_1024,
                                   trajectory=trajectory).model_dump_json())
    before_1024 = protocol_7_bytes(a.steps_1024, trajectory, [b"\0" * a.png_1024])
    stored = protocol_7_bytes(a.steps_1024, trajectory, [b"\0" * stored_png_bytes(1024, 1024)])
    print(f"before_bytes_per_answer_1024px: {before_1024} bytes")
    print(f"before_bytes_per_answer_1024px_stored_png: {stored} bytes")
    print(f"after_bytes_per_answer_1024px: {after_1024} bytes")
    print(f"after_over_before_1024px: {after_1024 / before_1024:.5f} ratio")


if __name__ == "__main__":
    main()
