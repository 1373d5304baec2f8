"""What checking costs and what honest miners score, each figure on its own line as
`name: value unit`.

An honest tiny CPU engine answers --n chat and --n image requests (mixed seeds, temperatures,
top-p; text-to-image, image-to-image, inpaint); the validator's reference checks each one.
Reports the reference's time as a fraction of the miner's generation time per kind, and the
distribution of the honest answers' quality (the speed factor of a passed check, 0 if failed).

    python scripts/bench_checking.py [--n 25]
"""

from __future__ import annotations

import base64
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core/ and devtools/


def main() -> None:
    from core.cli import parser

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=25, help="requests of each kind (chat, images)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from core.backends import load_engine
    from core.checking.service import Job, preload, quality_of
    from core.checking.trajectory import opened_in_process, pick_steps
    from core.protocol import (
        ChatChunk,
        ChatRequest,
        ImageToImageRequest,
        InpaintRequest,
        TextToImageRequest,
    )

    tasks = ("chat-llama-3", "proteus-text-to-image", "proteus-image-to-image", "inpaint")
    miner = {t: load_engine(t) for t in tasks}
    preload("cpu", tasks)  # the validator's own reference models, loaded outside the timings
    settings = [(0.0, 1.0), (0.7, 0.9), (1.0, 1.0), (1.0, 0.95)]
    gen = {"chat": 0.0, "image": 0.0}
    chk = {"chat": 0.0, "image": 0.0}
    qualities, failures = [], []
    rng = random.Random(0)
    for i in range(a.n):
        temperature, top_p = settings[i % len(settings)]
        request = ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": f"q{i}"}],
                              max_tokens=236, temperature=temperature, top_p=top_p, seed=i)
        t = time.perf_counter()
        tokens = list(miner["chat-llama-3"].tokens(request))
        generated = time.perf_counter() - t
        final = ChatChunk(done=True, prompt_tokens=len(miner["chat-llama-3"].prompt_ids(request)),
                          completion_tokens=len(tokens))
        gen["chat"] += generated
        t = time.perf_counter()
        q, reason = quality_of(Job(i, 0, request.task, request, (tokens, final), generated,
                                   final.units), "cpu")
        chk["chat"] += time.perf_counter() - t
        qualities.append(q)
        failures += [reason] if reason else []
    init = None
    for i in range(a.n):
        common = dict(prompt=f"a lighthouse {i}", steps=10, height=64, width=64, seed=i)
        if init is None or i % 3 == 0:
            request = TextToImageRequest(task="proteus-text-to-image", **common)
        elif i % 3 == 1:
            request = ImageToImageRequest(task="proteus-image-to-image", init_image=init, **common)
        else:
            request = InpaintRequest(task="inpaint", init_image=init, mask_image=init, **common)
        t = time.perf_counter()
        answer = miner[request.task].answer(request)
        generated = time.perf_counter() - t
        gen["image"] += generated
        t = time.perf_counter()  # the check: the openings of the steps drawn, then their re-runs
        openings = opened_in_process(miner[request.task], request, answer,
                                     pick_steps(answer, rng))
        init = init or base64.b64encode(openings.images[0]).decode()
        q, reason = quality_of(Job(i, 0, request.task, request, answer, generated, request.units,
                                   openings=openings), "cpu")
        chk["image"] += time.perf_counter() - t
        qualities.append(q)
        failures += [reason] if reason else []
    qualities.sort()
    print(f"honest_requests: {len(qualities)} count")
    print(f"honest_failed_checks: {len(failures)} count")
    print(f"honest_quality_mean: {statistics.mean(qualities):.4f} score")
    print(f"honest_quality_min: {qualities[0]:.4f} score")
    print(f"honest_quality_p10: {qualities[len(qualities) // 10]:.4f} score")
    print(f"chat_check_time_over_generation: {chk['chat'] / gen['chat']:.3f} ratio")
    print(f"image_check_time_over_generation: {chk['image'] / gen['image']:.3f} ratio")
    for reason in failures:
        print(f"# failed: {reason}")


if __name__ == "__main__":
    main()
