"""Synthetic requests: the validator's own work for a contender, sized to the task's units per
synthetic request, that a miner cannot tell from its users' requests (so cannot serve while
refusing those): prompts from a corpus of real ones (``core.request_shapes``), sampling
parameters and conversation shapes as the organic API recently forwarded them
(``core.sampling_mix``), images and masks made for each request, and every choice from
the ``rng`` given, a ``random.SystemRandom`` in the validator (nothing a miner can replay)."""

from __future__ import annotations

import random
from typing import Protocol

from core.protocol import (
    MAX_COMPLETION,
    ChatRequest,
    ImageToImageRequest,
    InpaintRequest,
    TaskRequest,
    TextToImageRequest,
)
from core.request_shapes import (
    chars_within,
    conversation,
    image_prompt,
    noise_and_mask,
    prompt_budget,
)
from core.sampling_mix import ORGANIC, Sampling, SamplingMix
from core.tasks import TASKS, Kind

SEED_BITS = 62  # as the organic API draws a seed its client left out
FITS = 6  # tries to find a conversation the tokenizer counts within the prompt's budget


class CountsPrompts(Protocol):
    """What sizes a chat request's prompt: the validator's ``PromptCounter`` (the task's own
    tokenizer) or, in a miner's calibration, its engine's."""

    def prompt_tokens(self, request: ChatRequest) -> int: ...


def synthetic_request(task_id: str, units: int, rng: random.Random, image_size: int,
                      counter: CountsPrompts | None, mix: SamplingMix = ORGANIC) -> TaskRequest:
    """A request that costs at most ``units`` of the task (exactly, for image tasks; for a chat
    request of at least ``smallest_request``, its prompt, as ``counter`` counts it or as the miner
    estimates it, whichever is more, plus its max_tokens: what ``Traffic.cost`` reserves).
    ``counter`` may be None for an image task. The one builder of synthetic requests: a miner's
    calibration (``core.miner.calibrate``) sends what validators send."""
    kind = TASKS[task_id].kind
    seed = rng.getrandbits(SEED_BITS)
    if kind is Kind.CHAT:
        if counter is None:
            raise ValueError("a chat request is sized with the task's tokenizer: pass a counter")
        return _chat(task_id, units, rng, counter, mix.draw(rng), seed)
    text = image_prompt(rng)
    if kind is Kind.TEXT_TO_IMAGE:
        return TextToImageRequest(task=task_id, prompt=text, steps=units, seed=seed,
                                  height=image_size, width=image_size)
    image, mask = noise_and_mask(image_size, rng.getrandbits(64))
    if kind is Kind.IMAGE_TO_IMAGE:
        return ImageToImageRequest(task=task_id, prompt=text, steps=units, seed=seed,
                                   height=image_size, width=image_size, init_image=image)
    return InpaintRequest(task=task_id, prompt=text, steps=units, seed=seed, height=image_size,
                          width=image_size, init_image=image, mask_image=mask)


def _chat(task_id: str, units: int, rng: random.Random, counter: CountsPrompts,
          sampling: Sampling, seed: int) -> ChatRequest:
    """A conversation of ``sampling``'s shape within the prompt's budget as both counts have it
    (a tokenizer may count more than the allowance: each try scales the characters down by as
    much), and the rest of the units as max_tokens, all of them asked for (``min_tokens``)."""
    budget = prompt_budget(units)
    max_chars = chars_within(budget)
    for _ in range(FITS):
        request = ChatRequest(task=task_id, temperature=sampling.temperature,
                              top_p=sampling.top_p, stop=list(sampling.stop), seed=seed,
                              messages=conversation(rng, max_chars, sampling.system,
                                                    sampling.turns))
        head = max(counter.prompt_tokens(request), request.prompt_allowance())
        if head <= budget:
            break
        max_chars = max_chars * budget // head
    request.max_tokens = max(1, min(units - head, MAX_COMPLETION))
    # its length is fixed: a shorter answer is invalid on receipt, not a statistical question
    # (docs/protocol.md §8); a mirrored shape with stop sequences ends at them instead
    request.min_tokens = 0 if request.stop else request.max_tokens
    return request
