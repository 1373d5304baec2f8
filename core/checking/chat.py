"""Checking a chat completion against the reference model.

One forward pass over prompt and completion gives the model's distribution before every token.
The answer fails when: the units charged are not the tokens the model's tokenizer counts; a
reported logprob differs from the recomputed one beyond ``tolerance``; a token lies outside what
the requested temperature and top-p allow (not the argmax at temperature 0, outside the nucleus);
the completion as a whole is far less likely than sampling gives (a z-test on its surprisal, which
random or other-model text fails); or it stops before max_tokens without an end-of-sequence
token or a stop sequence, or goes on past a stop sequence (``why_it_ended``; any id of
``core.backends.tokens.eos_ids`` ends a completion, as in the engines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.backends.tokens import Detokenizer
from core.backends.transformers_chat import TransformersChat
from core.checking import Verdict
from core.protocol import ChatChunk, ChatRequest, ChatToken, stop_at

# The rule's thresholds, measured by scripts/bench_checker_tolerance.py (figures in docs/protocol.md
# §8): vLLM bf16 and fp32 on the CPU against the fp32 reference, and on an H200 the transformers
# engine in bf16 and fp32 against the bf16 CUDA reference `--check gpu` loads. Honest completions
# differ by up to 0.32 nats on a token (p99, a 1024-wide Llama on CUDA) and 0.052 on average; a
# model with 4-bit weights by 2.6 nats on its worst token (median) and at least 0.05 on average.
LOGPROB_TOLERANCE = 0.35  # nats, on any one token; also the slack for ties at temperature 0
MEAN_TOLERANCE = 0.08  # nats, averaged over the completion's tokens (0.04 failed 20% of honest)
NUCLEUS_SLACK = 0.075  # probability mass: bf16 rounding moved the nucleus edge by up to 0.057
Z_MAX = 5.0  # surprisal standard deviations above what sampling gives (honest: at most 3.9)


@dataclass(frozen=True)
class Evidence:
    """What the reference says of a completion's tokens, before any threshold: the checker's rule
    (``judge``) and the tolerance benchmark (scripts/bench_checker_tolerance.py) read the same."""

    max_delta: float  # nats: the largest |reported - recomputed| logprob over the tokens
    mean_delta: float  # nats: the mean of the same
    argmax_gap: float  # nats: the most a token falls below the most likely one (temperature 0)
    nucleus_excess: float  # probability mass ranked above a token beyond top_p (> 0: outside)
    z: float  # the completion's surprisal in standard deviations above sampling's


def evidence(reference: TransformersChat, request: ChatRequest,
             tokens: list[ChatToken]) -> Evidence:
    """One forward pass of the reference over prompt and completion (token ids in range)."""
    ids = torch.tensor([t.token_id for t in tokens])
    logits = reference.completion_logits(request, ids.tolist())
    raw = torch.log_softmax(logits, -1)
    chosen = raw.gather(1, ids[:, None])[:, 0]
    reported = torch.tensor([t.logprob for t in tokens])
    off = (reported - chosen).abs()
    gap = float((raw.max(-1).values - chosen).max())
    temperature = request.temperature or 1.0  # the sampling tests only apply above 0
    probs = torch.softmax(logits / temperature, -1)
    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, -1) - sorted_probs  # mass ranked above each token
    rank = torch.argsort(order, -1).gather(1, ids[:, None])[:, 0]
    mass_above = before.gather(1, rank[:, None])[:, 0]
    # the nucleus as the miner may have seen it: its logits differ from ours by rounding (bf16),
    # so a token just past our boundary is in it (else its surprisal alone would be ~69 nats)
    inside = before < request.top_p + NUCLEUS_SLACK
    nucleus = torch.where(inside, sorted_probs, torch.zeros_like(sorted_probs))
    nucleus = nucleus / nucleus.sum(-1, keepdim=True)
    logq = torch.log(nucleus.clamp_min(1e-30))
    entropy = -(nucleus * logq).sum(-1)
    second = (nucleus * logq ** 2).sum(-1)
    surprisal = -logq.gather(1, rank[:, None])[:, 0]
    var = (second - entropy ** 2).clamp_min(0).sum()
    z = float((surprisal.sum() - entropy.sum()) / math.sqrt(float(var) + 1e-6))
    return Evidence(max_delta=float(off.max()), mean_delta=float(off.mean()), argmax_gap=gap,
                    nucleus_excess=float((mass_above - request.top_p).max()), z=z)


def judge(e: Evidence, request: ChatRequest, tolerance: float = LOGPROB_TOLERANCE) -> Verdict:
    """The rule: logprobs as the model's within ``tolerance`` on every token and MEAN_TOLERANCE
    on average (bf16 rounding errs on a few tokens; a different or quantized model on many); at
    temperature 0 the most likely token each time, within ``tolerance``; else every token inside
    the nucleus and the text as likely as sampling gives."""
    if not math.isfinite(e.max_delta) or e.max_delta > tolerance:
        return Verdict(False, f"reported logprobs differ from the model's by up to "
                              f"{e.max_delta:.3f} nats (tolerance {tolerance})")
    if e.mean_delta > MEAN_TOLERANCE:
        return Verdict(False, f"reported logprobs differ from the model's by {e.mean_delta:.3f} "
                              f"nats on average (tolerance {MEAN_TOLERANCE})")
    if request.temperature == 0:
        if e.argmax_gap > tolerance:
            return Verdict(False, "a token is not the most likely one at temperature 0")
        return Verdict(True)
    if e.nucleus_excess >= NUCLEUS_SLACK:
        return Verdict(False, f"a token lies outside the top-p {request.top_p} nucleus")
    if e.z > Z_MAX:
        return Verdict(False, f"text far less likely than sampling at temperature "
                              f"{request.temperature} gives (z = {e.z:.1f})")
    return Verdict(True)


def why_it_ended(reference: TransformersChat, request: ChatRequest,
                 tokens: list[ChatToken]) -> str | None:
    """None when the completion ended where the rules end it: at ``max_tokens``, an
    end-of-sequence token, or the token that completes a stop sequence (``stop_at``, on the text
    as the reference tokenizer decodes the ids, not the miner's text); else why not."""
    text = Detokenizer(reference.tokenizer)
    pieces = [text.add(t.token_id) for t in tokens]
    before = "".join(pieces[:-1])
    if request.stop and stop_at(before, request.stop) is not None:
        return "went on past a stop sequence"
    if len(tokens) >= request.max_tokens or tokens[-1].token_id in reference.eos:
        return None
    if request.stop and stop_at(before + pieces[-1], request.stop) is not None:
        return None
    return (f"stopped at {len(tokens)} of {request.max_tokens} tokens without an end-of-sequence "
            f"token or a stop sequence (truncated)")


def check_chat(reference: TransformersChat, request: ChatRequest, tokens: list[ChatToken],
               final: ChatChunk, tolerance: float = LOGPROB_TOLERANCE) -> Verdict:
    prompt = len(reference.prompt_ids(request))
    if final.prompt_tokens != prompt or final.completion_tokens != len(tokens):
        return Verdict(False, f"charged {final.prompt_tokens}+{final.completion_tokens} tokens, "
                              f"counted {prompt}+{len(tokens)}")
    if not tokens:
        return Verdict(False, "empty completion")
    ending = why_it_ended(reference, request, tokens)
    if ending is not None:
        return Verdict(False, ending)
    if any(t.token_id >= reference.model.config.vocab_size for t in tokens):
        return Verdict(False, "token ids outside the model's vocabulary")
    return judge(evidence(reference, request, tokens), request, tolerance)
