"""Checking a chat completion against the reference model.

One forward pass over prompt and completion gives the model's distribution before every token.
The answer fails when: the units charged are not the tokens the model's tokenizer counts; a
reported logprob differs from the recomputed one beyond ``tolerance``; a token lies outside what
the requested temperature and top-p allow (not the argmax at temperature 0, outside the nucleus);
the completion as a whole is far less likely than sampling gives (a z-test on its surprisal, which
random or other-model text fails); or it stops before max_tokens without the end-of-sequence
token (truncated; any id of ``core.backends.tokens.eos_ids`` ends a completion, as in the
engines).
"""

from __future__ import annotations

import math

import torch

from core.backends.transformers_chat import TransformersChat
from core.checking import Verdict
from core.protocol import ChatChunk, ChatRequest, ChatToken

LOGPROB_TOLERANCE = 0.05  # nats; the CPU reference is exact, GPUs in bf16 need more (see README)
ARGMAX_SLACK = 1e-3  # nats: ties at temperature 0
NUCLEUS_SLACK = 1e-3  # probability mass
Z_MAX = 6.0  # surprisal standard deviations above what sampling gives


def check_chat(reference: TransformersChat, request: ChatRequest, tokens: list[ChatToken],
               final: ChatChunk, tolerance: float = LOGPROB_TOLERANCE) -> Verdict:
    prompt = len(reference.prompt_ids(request))
    if final.prompt_tokens != prompt or final.completion_tokens != len(tokens):
        return Verdict(False, f"charged {final.prompt_tokens}+{final.completion_tokens} tokens, "
                              f"counted {prompt}+{len(tokens)}")
    if not tokens:
        return Verdict(False, "empty completion")
    if len(tokens) < request.max_tokens and tokens[-1].token_id not in reference.eos:
        return Verdict(False, f"stopped at {len(tokens)} of {request.max_tokens} tokens without "
                              f"an end-of-sequence token (truncated)")
    ids = torch.tensor([t.token_id for t in tokens])
    if ids.min() < 0 or ids.max() >= reference.model.config.vocab_size:
        return Verdict(False, "token ids outside the model's vocabulary")
    logits = reference.completion_logits(request, ids.tolist())
    raw = torch.log_softmax(logits, -1)
    chosen = raw.gather(1, ids[:, None])[:, 0]
    reported = torch.tensor([t.logprob for t in tokens])
    off = (reported - chosen).abs()
    if not torch.isfinite(reported).all() or off.max() > tolerance:
        return Verdict(False, f"reported logprobs differ from the model's by up to "
                              f"{off.max():.3f} nats (tolerance {tolerance})")
    if request.temperature == 0:
        if (chosen < raw.max(-1).values - ARGMAX_SLACK).any():
            return Verdict(False, "a token is not the most likely one at temperature 0")
        return Verdict(True)
    return _sampled_plausibly(logits, ids, request.temperature, request.top_p)


def _sampled_plausibly(logits: torch.Tensor, ids: torch.Tensor, temperature: float,
                       top_p: float) -> Verdict:
    probs = torch.softmax(logits / temperature, -1)
    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, -1) - sorted_probs  # mass ranked above each token
    rank = torch.argsort(order, -1).gather(1, ids[:, None])[:, 0]
    mass_above = before.gather(1, rank[:, None])[:, 0]
    if (mass_above >= top_p + NUCLEUS_SLACK).any():
        return Verdict(False, f"a token lies outside the top-p {top_p} nucleus")
    keep = before < top_p
    nucleus = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    nucleus = nucleus / nucleus.sum(-1, keepdim=True)
    logq = torch.log(nucleus.clamp_min(1e-30))
    entropy = -(nucleus * logq).sum(-1)
    second = (nucleus * logq ** 2).sum(-1)
    surprisal = -logq.gather(1, rank[:, None])[:, 0]
    var = (second - entropy ** 2).clamp_min(0).sum()
    z = float((surprisal.sum() - entropy.sum()) / math.sqrt(float(var) + 1e-6))
    if z > Z_MAX:
        return Verdict(False, f"text far less likely than sampling at temperature {temperature} "
                              f"gives (z = {z:.1f})")
    return Verdict(True)
