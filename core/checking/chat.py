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
# Below this temperature the surprisal test is not applied: a logit's rounding moves the tempered
# surprisal by its error / T, and honest bf16 answers at T = 0.02 reached z = 8.3 (9 of 24, 128
# tokens, tiny Llama); the replay, counted in logit units, judges them instead (0 misses there)
Z_MIN_TEMPERATURE = 0.1
# The replay rule: a token "misses" when the key (core.sampler.keys) of the best token of the
# reference's nucleus at top_p - NUCLEUS_SLACK exceeds the miner's token's key by more than
# REPLAY_GAP x the temperature's inverse (the gap is counted in logit units: nats x T)
# (or the token lies outside the nucleus at top_p + NUCLEUS_SLACK); an answer
# with more than REPLAY_MAX_MISSES misses fails, and so does one that ended early on a miss.
# Calibrated by scripts/bench_checker_tolerance.py (``calibrate``: honest answers to other
# requests than those judged; the largest gap of the grid that catches within 1% as many
# seed-ignoring answers as the best, with one honest miss to spare). The catch is flat in the
# gap (transformers, tiny Llama, T 0.7 and 1.0, 120 requests a set: 0.975 of 80 at 0.25, 0.5
# and 1.0, 0.900 at 2.0), so the gap is 1.0, ten times the largest honest gap there (0.09; 0.24
# in key nats in an earlier run): an honest GPU's rounding is larger than the tiny model's on
# the CPU. Held out in the same run: 0 of 240 honest bf16 and fp32 answers failed, 76 of 78
# seed-ignoring ones did. Re-measure on a production model's GPU.
REPLAY_GAP = 1.0  # logit units (nats x temperature)
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
    # logit units (nats x T), per token (temperature > 0; empty at 0): how far the token's key
    # falls below the key of the reference's draw for the request's seed (inf: outside the
    # nucleus)
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
    """Per token, the key of the reference's draw minus the key of the miner's token
    (``core.sampler.keys``), times the temperature (in logit units): ~0 when the miner drew
    with the request's seed from the same
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
        # in logit units (x temperature): a logit's rounding moves a key by error / T, so at a
        # low temperature an honest near tie would otherwise miss by whole nats
        gaps += (gap * request.temperature).masked_fill(outside, math.inf).tolist()
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
    if e.z > Z_MAX and request.temperature >= Z_MIN_TEMPERATURE:
        return Verdict(False, f"text far less likely than sampling at temperature "
                              f"{request.temperature} gives (z = {e.z:.1f})")
    return Verdict(True)


def replay(e: Evidence, gap: float = REPLAY_GAP, max_misses: int = REPLAY_MAX_MISSES,
           ended_early: bool = False) -> Verdict:
    """The replay rule: at most ``max_misses`` tokens that are not the protocol sampler's draw
    for the request's seed, within ``gap`` (temperature 0 has no gaps: the statistical rule's
    argmax test covers it); and when the completion ended before max_tokens (``ended_early``),
    its last token, the one that ended it, is the draw: the spare miss is for rounding, not
    for stopping where the seed's draw goes on."""
    misses = e.misses(gap)
    if misses > max_misses:
        return Verdict(False, f"{misses} of {len(e.gaps)} tokens are not the protocol sampler's "
                              f"draw for the request's seed (at most {max_misses})")
    if ended_early and e.gaps and not e.gaps[-1] <= gap:
        return Verdict(False, "ended where the protocol sampler's draw for the request's seed "
                              "goes on")
    return Verdict(True)


def judge(e: Evidence, request: ChatRequest, tolerance: float = LOGPROB_TOLERANCE,
          ended_early: bool = False) -> Verdict:
    """The whole rule: the statistical one, then the replay."""
    verdict = statistical(e, request, tolerance)
    return replay(e, ended_early=ended_early) if verdict.passed else verdict


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
    return judge(evidence(reference, request, tokens), request, tolerance,
                 ended_early=len(tokens) < request.max_tokens)
