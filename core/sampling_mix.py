"""What this validator's users ask for, so that its synthetic chat requests ask the same: a miner
that could tell synthetic requests by their sampling parameters or their shape could serve those
and refuse organic traffic for free.

The organic API records each chat request it serves (``Organic.chat``): its temperature, top_p
and stop sequences, whether it has a system prompt, and how many user turns. Synthetic requests
draw one of the last ``RECENT`` recorded, so every combination comes out at the rate users send
it, and the mix follows users as their clients change (a reservoir over all history would lag).
Nothing a user wrote is kept but the stop sequences (at most 4 of 64 characters, as the protocol
bounds them): prompts are never replayed to miners.

Before any organic request, the stated default: what an OpenAI client sends when its caller sets
nothing (temperature 1, top_p 1, no stop, one user message and no system prompt), with the
temperatures applications commonly set, 0.7 and 0, beside it. There are no users' requests then
to tell synthetic ones from, at this validator.

The mix is the process's own: API replicas on other processes record theirs, not this one's.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from core.protocol import ChatRequest

RECENT = 1024  # organic requests remembered: a few hundred bytes each

DEFAULT_TEMPERATURES, TEMPERATURE_ODDS = (1.0, 0.7, 0.0), (0.6, 0.3, 0.1)


@dataclass(frozen=True)
class Sampling:
    """The parameters and shape of a chat request, not its text."""

    temperature: float
    top_p: float
    stop: tuple[str, ...]
    system: bool
    turns: int  # user messages

    @classmethod
    def of(cls, request: ChatRequest) -> Sampling:
        roles = [m.role for m in request.messages]
        return cls(request.temperature, request.top_p, tuple(request.stop), "system" in roles,
                   max(1, roles.count("user")))


def default_sampling(rng: random.Random) -> Sampling:
    """A draw from the stated default mix."""
    return Sampling(rng.choices(DEFAULT_TEMPERATURES, TEMPERATURE_ODDS)[0], 1.0, (), False, 1)


class SamplingMix:
    def __init__(self, recent: int = RECENT):
        self._recent: deque[Sampling] = deque(maxlen=recent)

    def record(self, request: ChatRequest) -> None:
        self._recent.append(Sampling.of(request))

    def draw(self, rng: random.Random) -> Sampling:
        """One of the recent organic requests' samplings, each as likely; the default mix before
        any."""
        return rng.choice(self._recent) if self._recent else default_sampling(rng)


# this process's organic chat requests, shared by its organic API and its period loop
ORGANIC = SamplingMix()
