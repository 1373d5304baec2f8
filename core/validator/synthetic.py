"""Synthetic requests: the validator's own work for a contender, sized to the task's units per
synthetic request, with prompts and seeds the miner cannot predict."""

from __future__ import annotations

import random

from core.protocol import (
    MAX_COMPLETION,
    ChatMessage,
    ChatRequest,
    ImageToImageRequest,
    InpaintRequest,
    TaskRequest,
    TextToImageRequest,
)
from core.request_shapes import noise_and_mask, prompt
from core.tasks import TASKS, Kind
from core.validator.counting import PromptCounter

CHAT_PROMPT_ALLOWANCE = 64  # tokens of a request's units the rendered prompt takes at most


def min_units(task_id: str) -> int:
    """The smallest request worth sending: a chat request's prompt alone costs about the
    allowance, so a smaller one would overshoot what it was sized for."""
    return CHAT_PROMPT_ALLOWANCE + 1 if TASKS[task_id].kind is Kind.CHAT else 1


def synthetic_request(task_id: str, units: int, rng: random.Random, image_size: int,
                      counter: PromptCounter) -> TaskRequest:
    """A request that costs at most ``units`` of the task (exactly, for image tasks; a chat
    request's prompt, as ``counter`` counts it or as the miner estimates it, whichever is more,
    plus its max_tokens: what ``Traffic.cost`` reserves)."""
    kind = TASKS[task_id].kind
    seed = rng.getrandbits(63)
    if kind is Kind.CHAT:
        request = ChatRequest(task=task_id,
                              messages=[ChatMessage(role="user", content=prompt(rng))],
                              temperature=rng.choice((0.0, 0.7, 1.0)),
                              top_p=rng.choice((0.9, 1.0)), seed=seed)
        head = max(counter.prompt_tokens(request), request.prompt_allowance())
        request.max_tokens = max(1, min(units - head, MAX_COMPLETION))
        return request
    text = prompt(rng)
    if kind is Kind.TEXT_TO_IMAGE:
        return TextToImageRequest(task=task_id, prompt=text, steps=units, seed=seed,
                                  height=image_size, width=image_size)
    image, mask = noise_and_mask(image_size, rng.randrange(8))
    if kind is Kind.IMAGE_TO_IMAGE:
        return ImageToImageRequest(task=task_id, prompt=text, steps=units, seed=seed,
                                   height=image_size, width=image_size, init_image=image)
    return InpaintRequest(task=task_id, prompt=text, steps=units, seed=seed, height=image_size,
                          width=image_size, init_image=image, mask_image=mask)
