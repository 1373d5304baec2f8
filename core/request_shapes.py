"""The shape of a synthetic request, shared by the validator's synthetic traffic and the miner's
calibration so both measure the same work: chat conversations and image prompts drawn from a
corpus of real prompts, sized to the request's units, and for image-to-image and inpaint a smooth
random image and a mask of random shapes (base64 PNGs), made anew for every request.

Every draw takes its randomness from the ``rng`` it is given: the validator gives a
``random.SystemRandom`` (the operating system's secrets, nothing a miner can replay), calibration
a seeded one.

The corpus, ``core/corpus/prompts.json.gz`` (880 KiB; 2.6 MB of JSON), is taken unchanged but for
trimmed whitespace, duplicates dropped, prompts of more than 400 characters (no request of the
current tasks has room for one) and replies of more than 200 left out, from:

- chat prompts (16,200), each with a reply where its source has a short one (an earlier turn of
  a conversation): Natural Questions open, dev and EfficientQA splits (7,179 real search
  questions, their first answer as the reply; CC BY-SA 3.0, google-research-datasets/
  natural-questions fb26a30); GSM8K train and test (8,260 grade-school maths problems, without
  their worked solutions; MIT, openai/grade-school-math 3101c7d); Self-Instruct's seed and
  user-oriented tasks (369 instructions with an input, their output as the reply; Apache 2.0,
  yizhongw/self-instruct 0b26cca); OpenAssistant's prompt lottery (250 prompts people wrote;
  Apache 2.0, LAION-AI/Open-Assistant f1e6ed9); MT-Bench and Vicuna-bench first turns (142;
  Apache 2.0, lm-sys/FastChat 0e6d3e4);
- system prompts (22): the system messages of FastChat's conversation templates (Apache 2.0,
  lm-sys/FastChat 0e6d3e4), the ones chat front ends send;
- image prompts (1,632): PartiPrompts (Apache 2.0, google-research/parti 5a65797).

The file as a whole is shared under CC BY-SA 3.0 (the share-alike terms of its Natural Questions
part); each part keeps its source's licence above. A source is drawn with weight
proportional to the square root of its size, so that neither the maths problems nor the search
questions make up most of the traffic. What is written here and not taken from a corpus, and so
said: the openers and closers a prompt may get (users' own framing, and what keeps two requests
from sharing a prompt: a source of a few thousand prompts would repeat within a few hundred
requests), and the style modifiers an image prompt may get (PartiPrompts are bare scenes; no
corpus of image prompts with modifiers is at hand).

A public corpus is public: a miner that reads this file can tell a prompt built from it by its
words. Only a corpus the miners do not have hides that.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import math
import random
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import accumulate
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.protocol import ChatMessage
from core.tasks import TASKS, Kind

CORPUS = Path(__file__).parent / "corpus" / "prompts.json.gz"
CHAT_PROMPT_ALLOWANCE = 64  # tokens of a request's units its prompt may always take (at least)
# of a chat request's units its prompt may take: a prompt token costs a miner far less than a
# completion token, so the completion stays at least half of what an audit asks
PROMPT_SHARE = 0.5
TEMPLATE_ALLOWANCE = 32  # tokens ``ChatRequest.prompt_allowance`` adds for the chat template
MAX_TURNS = 4  # user turns of a synthetic conversation: more leave each too few characters

OPENERS = ("Hi! ", "Hey, ", "Hello. ", "Quick question: ", "Question: ", "Please help: ",
           "Can you help me? ", "Hi there, ", "I need some help. ", "Hey there! ",
           "Please answer this: ", "Help me with this: ")
CLOSERS = (" Thanks!", " Thank you.", " Thanks in advance.", " Please be concise.",
           " Keep it short.", " Explain step by step.", " Answer briefly.", " Please explain.",
           " Be detailed.", " Use simple words.", " Give examples.", " Explain like I'm five.")
STYLES = ("digital art", "oil painting", "highly detailed", "4k", "cinematic lighting",
          "photorealistic", "watercolor", "concept art", "studio lighting", "35mm photo",
          "sharp focus", "octane render", "fantasy art", "anime style", "award-winning photo",
          "bokeh", "golden hour", "vibrant colors", "minimalist", "isometric", "low poly",
          "pixel art", "trending on artstation", "dramatic lighting")
STYLE_COUNTS = (0, 1, 2, 3, 4)
STYLE_WEIGHTS = (0.1, 0.25, 0.3, 0.25, 0.1)  # a bare scene is rare: 1,632 of them would repeat
# A mask covers at least a quarter of the image, as the centred square before it: the image
# checker compares whole thumbnails, and below about a fifth covered it no longer tells another
# model's inpainting from the reference's (scripts/bench_image_tolerance.py, the tiny pipeline)
MASK_COVER = (0.25, 0.5)
MASK_SHAPES = 32  # at most, until the mask covers its share


class _Pool:
    """Texts sorted by length with cumulative weights: a weighted draw among those that fit."""

    def __init__(self, items: Sequence[tuple[tuple[str, ...], float]]):
        ordered = sorted(items, key=lambda item: sum(map(len, item[0])))
        self.items = [texts for texts, _ in ordered]
        self.lengths = [sum(map(len, texts)) for texts in self.items]
        self.cumulative = list(accumulate(weight for _, weight in ordered))

    def draw(self, rng: random.Random, max_chars: int) -> tuple[str, ...] | None:
        fit = bisect_right(self.lengths, max_chars)
        if fit == 0:
            return None
        at = bisect_right(self.cumulative, rng.random() * self.cumulative[fit - 1])
        return self.items[min(at, fit - 1)]

    def shortest(self) -> tuple[str, ...]:
        return self.items[0]


@dataclass(frozen=True)
class _Corpus:
    prompts: _Pool  # (prompt,)
    exchanges: _Pool  # (prompt, reply): an earlier turn of a conversation
    systems: _Pool  # (system prompt,)
    images: tuple[str, ...]


@cache
def _corpus() -> _Corpus:
    data = json.loads(gzip.decompress(CORPUS.read_bytes()))
    prompts, exchanges = [], []
    for rows in data["chat"].values():
        weight = math.sqrt(len(rows)) / len(rows)  # each source sqrt(its size) in all
        prompts += [((prompt,), weight) for prompt, _ in rows]
        exchanges += [((prompt, reply), weight) for prompt, reply in rows if reply]
    return _Corpus(_Pool(prompts), _Pool(exchanges), _Pool([((s,), 1.0) for s in data["system"]]),
                   tuple(data["image"]))


def smallest_request(task_id: str) -> int:
    """The fewest units a synthetic request of the task may have: a chat request's prompt alone
    may take ``CHAT_PROMPT_ALLOWANCE``, so a smaller one would cost more than it was sized for."""
    return CHAT_PROMPT_ALLOWANCE + 1 if TASKS[task_id].kind is Kind.CHAT else 1


def prompt_budget(units: int) -> int:
    """Tokens of a chat request of ``units`` its prompt may take: ``PROMPT_SHARE`` of them, and
    never less than ``CHAT_PROMPT_ALLOWANCE``."""
    return max(CHAT_PROMPT_ALLOWANCE, int(units * PROMPT_SHARE))


def chars_within(tokens: int) -> int:
    """The most characters of messages whose ``ChatRequest.prompt_allowance`` (a token per 2
    characters plus the template's) stays within ``tokens``."""
    return max(0, 2 * (tokens - TEMPLATE_ALLOWANCE) + 1)


def user_prompt(rng: random.Random, max_chars: int | None = None) -> str:
    """A prompt of the corpus, with an opener and a closer half the time each, of at most
    ``max_chars`` characters; the corpus's shortest when none is that short."""
    pool = _corpus().prompts
    opener = rng.choice(OPENERS) if rng.random() < 0.5 else ""
    closer = rng.choice(CLOSERS) if rng.random() < 0.5 else ""
    limit = pool.lengths[-1] + len(opener) + len(closer) if max_chars is None else max_chars
    text = pool.draw(rng, limit - len(opener) - len(closer))
    if text is not None:
        return opener + text[0] + closer
    return (pool.draw(rng, limit) or pool.shortest())[0]


def prompt(rng: random.Random, n: int = 1) -> str:
    """``n`` prompts of the corpus, a line each (one, or a longer text for a benchmark)."""
    return "\n".join(user_prompt(rng) for _ in range(n))


def conversation(rng: random.Random, max_chars: int, system: bool = False, turns: int = 1
                 ) -> list[ChatMessage]:
    """Messages of at most ``max_chars`` characters in all (or the corpus's shortest prompt): a
    system prompt when ``system``, ``turns - 1`` earlier exchanges, then the user's prompt. Parts
    share the characters evenly; one that finds nothing short enough is left out. At most
    ``MAX_TURNS`` turns."""
    corpus = _corpus()
    messages: list[ChatMessage] = []
    turns = max(1, min(turns, MAX_TURNS))
    left, parts = max_chars, int(system) + turns
    if system:
        found = corpus.systems.draw(rng, left // parts)
        if found is not None:
            messages.append(ChatMessage(role="system", content=found[0]))
            left -= len(found[0])
        parts -= 1
    for _ in range(turns - 1):
        pair = corpus.exchanges.draw(rng, left // parts)
        if pair is not None:
            messages += [ChatMessage(role="user", content=pair[0]),
                         ChatMessage(role="assistant", content=pair[1])]
            left -= len(pair[0]) + len(pair[1])
        parts -= 1
    return [*messages, ChatMessage(role="user", content=user_prompt(rng, left))]


def image_prompt(rng: random.Random) -> str:
    """A scene of the corpus with a few style modifiers."""
    scene = rng.choice(_corpus().images)
    styles = rng.sample(STYLES, rng.choices(STYLE_COUNTS, STYLE_WEIGHTS)[0])
    return ", ".join([scene, *styles])


def noise_and_mask(size: int, seed: int) -> tuple[str, str]:
    """(image, mask) of ``size`` x ``size`` pixels, both made from ``seed``: the image a smooth
    field of colours under a few flat shapes (white noise would itself be a tell), drawn at a
    quarter of the size and scaled up; the mask boxes, ellipses and brush strokes anywhere until
    they cover a share of the image drawn from ``MASK_COVER``. PNGs at the usual compression, as
    most encoders write them."""
    rng = np.random.default_rng(seed)
    small = max(8, size // 4)
    cells = int(rng.integers(2, 9))
    field = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    image = Image.fromarray(field, "RGB").resize((small, small), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 9))):
        _shape(draw, rng, small, tuple(int(c) for c in rng.integers(0, 256, 3)), (8, 2))
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cover = rng.uniform(*MASK_COVER) * 255
    for _ in range(MASK_SHAPES):
        _shape(draw, rng, size, 255, (4, 1.5), stroke=True)
        if np.asarray(mask).mean() >= cover:
            break
    return _png(image), _png(mask)


def _shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, fill,
           across: tuple[float, float], stroke: bool = False) -> None:
    """A box, an ellipse, or a polygon (a brush stroke when ``stroke``) ``size / across[0]`` to
    ``size / across[1]`` across, centred anywhere on the canvas (so never wholly off it)."""
    x, y = (int(v) for v in rng.integers(0, size, 2))
    w, h = (int(v) // 2 for v in rng.integers(max(2, int(size / across[0])),
                                                max(4, int(size / across[1])), 2))
    kind = int(rng.integers(3))
    if kind == 0:
        draw.rectangle([x - w, y - h, x + w, y + h], fill=fill)
    elif kind == 1:
        draw.ellipse([x - w, y - h, x + w, y + h], fill=fill)
    else:
        points = [(min(size - 1, max(0, x + int(rng.integers(-w, w + 1)))),
                   min(size - 1, max(0, y + int(rng.integers(-h, h + 1)))))
                  for _ in range(int(rng.integers(3, 7)))]
        if stroke:
            draw.line(points, fill=fill, width=max(2, min(w, h) // 2), joint="curve")
        else:
            draw.polygon(points, fill=fill)


def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
