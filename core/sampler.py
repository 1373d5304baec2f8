"""The protocol's sampler (docs/protocol.md §8): how a token is drawn from the model's logits
given the request's seed, temperature, top-p and min_tokens, the same on every engine, so the
validator can replay the draw from its own logits and see whether the miner drew with the
request's seed.

The noise is a pure function of (seed, position, token id): a 32-bit integer hash computed
exactly with int64 tensor ops (every product below 2**49), never a device's random stream, so
it is the same on any device and in any batch. With ``u = (h + 0.5) / 2**32`` and ``q = -log u``
(an Exp(1) variable per token), the token drawn is the argmax over the top-p nucleus of
``key = log p - log q`` with ``p = softmax(logits / temperature)``: the exponential race
(Gumbel-max), which draws each token with probability p renormalised over the nucleus. The
nucleus is the tokens whose mass ranked above them is < top_p. At temperature 0 the token is
the argmax of the logits (the lowest id on ties). At positions < ``min_tokens`` every
end-of-sequence id's logit is -inf before anything else (as vLLM's min_tokens does).

``draw`` is what engines call; ``keys`` is what the checker calls (the key of every token, so it
can measure how far the miner's token falls below the one the request's seed picks).
"""

from __future__ import annotations

from collections.abc import Collection

import torch

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9  # separates position 0 from the hash's fixed point at 0
_FMIX = (0x85EBCA6B, 0xC2B2AE35)  # MurmurHash3's finaliser constants


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` exactly in int64 for x < 2**32: c split into 16-bit halves, so no
    product reaches 2**49 (a full 32x32 product would overflow int64)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection whose every output bit depends on every input
    bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, _FMIX[0])
    x = x ^ (x >> 13)
    x = _mul32(x, _FMIX[1])
    return x ^ (x >> 16)


def _fmix32_int(x: int) -> int:
    return int(_fmix32(torch.tensor(x, dtype=torch.int64)))


def _words(seed: int, position: int) -> tuple[int, int]:
    """The two 32-bit words a (seed, position) hashes its tokens with:
    ``b = fmix(seed_hi ^ fmix(position ^ GOLDEN))`` and ``k = fmix(seed_lo ^ b)``."""
    b = _fmix32_int(((seed >> 32) & MASK32) ^ _fmix32_int((position ^ GOLDEN) & MASK32))
    return _fmix32_int((seed & MASK32) ^ b), b


def hashes(seeds: list[int], positions: list[int], vocab: int,
           device: torch.device | str = "cpu") -> torch.Tensor:
    """The 32-bit hash of (seed, position, token) for every token id below ``vocab``, one row
    per (seed, position) pair (int64, on ``device``): ``fmix(fmix(token ^ k) + b)``."""
    words = torch.tensor([_words(s, p) for s, p in zip(seeds, positions)], dtype=torch.int64,
                         device=device)
    tokens = torch.arange(vocab, dtype=torch.int64, device=device)
    k, b = words[:, :1], words[:, 1:]
    return _fmix32((_fmix32(tokens ^ k) + b) & MASK32)


def noise(seeds: list[int], positions: list[int], vocab: int,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """``-log q`` per row and token (float64), ``q = -log u``, ``u = (h + 0.5) / 2**32``: a
    Gumbel variable, so ``log p - log q`` races the tokens in proportion to p."""
    u = (hashes(seeds, positions, vocab, device).to(torch.float64) + 0.5) / 2.0**32
    return -torch.log(-torch.log(u))


def _masked(logits: torch.Tensor, positions: list[int], min_tokens: list[int],
            eos: Collection[int]) -> torch.Tensor:
    """The logits (rows) in float64, end-of-sequence ids at -inf in the rows before their
    ``min_tokens``."""
    logits = logits.to(torch.float64)
    early = [i for i, (p, m) in enumerate(zip(positions, min_tokens)) if p < m]
    if early and eos:
        logits = logits.clone()
        rows = torch.tensor(early, device=logits.device)[:, None]
        logits[rows, torch.tensor(sorted(eos), device=logits.device)] = float("-inf")
    return logits


def nucleus_mass_above(probs: torch.Tensor) -> torch.Tensor:
    """For each token, the probability mass of the tokens ranked above it (descending order,
    ties by lower id first): the nucleus at top-p is where this is < top_p."""
    sorted_probs, order = torch.sort(probs, descending=True, stable=True)
    before = torch.cumsum(sorted_probs, -1) - sorted_probs
    return torch.empty_like(before).scatter_(-1, order, before)


def log_probs(logits: torch.Tensor, positions: list[int], temperature: float,
              min_tokens: int = 0, eos: Collection[int] = ()) -> torch.Tensor:
    """``log p`` of consecutive positions of one completion (rows of logits): the tempered
    distribution the draw races over (float64). Temperature > 0."""
    masked = _masked(logits, positions, [min_tokens] * len(positions), eos)
    return torch.log_softmax(masked / temperature, -1)


def keys(logp: torch.Tensor, seed: int, positions: list[int]) -> torch.Tensor:
    """Every token's key ``log p - log q`` at each position (rows; -inf where p is 0): the draw
    is the argmax of the keys over the nucleus. What the checker replays."""
    return logp + noise([seed] * len(positions), positions, logp.shape[-1], logp.device)


def draw_rows(logits: torch.Tensor, seeds: list[int], positions: list[int],
              temperatures: list[float], top_ps: list[float], min_tokens: list[int],
              eos: Collection[int] = ()) -> list[int]:
    """The protocol's token for each row of ``logits`` (rows x vocab, any dtype and device),
    each row with its request's arguments and its position in the completion."""
    x = _masked(logits, positions, min_tokens, eos)
    tokens = torch.argmax(x, -1)  # temperature 0: the first maximum
    hot = [i for i, t in enumerate(temperatures) if t > 0]
    if hot:
        rows = torch.tensor(hot, device=x.device)
        temperature = torch.tensor([temperatures[i] for i in hot], dtype=torch.float64,
                                   device=x.device)
        logp = torch.log_softmax(x[rows] / temperature[:, None], -1)
        top_p = torch.tensor([top_ps[i] for i in hot], dtype=torch.float64, device=x.device)
        if bool((top_p < 1).any()):
            outside = nucleus_mass_above(logp.exp()) >= top_p[:, None]
            logp = logp.masked_fill(outside, float("-inf"))
        k = logp + noise([seeds[i] for i in hot], [positions[i] for i in hot], x.shape[-1],
                         x.device)
        tokens[rows] = torch.argmax(k, -1)
    return tokens.tolist()


def draw(logits: torch.Tensor, seed: int, position: int, temperature: float, top_p: float,
         min_tokens: int = 0, eos: Collection[int] = ()) -> int:
    """The protocol's token for one position, from that position's logits (one row)."""
    return draw_rows(logits[None], [seed], [position], [temperature], [top_p], [min_tokens],
                     eos)[0]

