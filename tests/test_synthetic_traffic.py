"""Synthetic traffic a miner cannot tell from organic traffic: prompts from a corpus of
real ones that two requests essentially never share, sampling parameters and conversation shapes
as users sent them recently, images and masks made for each request, every choice from the
validator's secrets, and each request still within the units it was sized for."""

import asyncio
import base64
import gzip
import io
import json
import random
import statistics

import numpy as np
import pytest
from PIL import Image

from core.protocol import ChatMessage, ChatRequest, ImageToImageRequest, InpaintRequest
from core.request_shapes import CLOSERS, CORPUS, OPENERS, STYLES, chars_within, smallest_request
from core.sampling_mix import DEFAULT_TEMPERATURES, Sampling, SamplingMix
from core.synthetic import synthetic_request
from core.tasks import TASKS, Kind
from core.validator.counting import PromptCounter
from core.validator.organic import NoCapacity, Organic

CHAT = "chat-llama-3"
SECRETS = random.SystemRandom()
# the tells of the synthetic traffic before protocol 6 (core/request_shapes.py at 5e77dca)
OLD_WORDS = {
    "river", "mountain", "quiet", "city", "lantern", "forest", "ocean", "copper", "violet",
    "engine", "garden", "winter", "harbor", "signal", "meadow", "thunder", "glass", "orchard",
    "desert", "comet", "library", "bridge", "marble", "echo", "falcon", "canyon", "velvet",
    "circuit", "island", "summer", "shadow", "crystal",
}
OLD_TEMPERATURES, OLD_TOP_PS = {0.0, 0.7, 1.0}, {0.9, 1.0}


@pytest.fixture(scope="module")
def counter():
    return PromptCounter("tiny")


@pytest.fixture(scope="module")
def corpus():
    data = json.loads(gzip.decompress(CORPUS.read_bytes()))
    rows = [row for rows in data["chat"].values() for row in rows]
    return {"prompts": {p for p, _ in rows}, "replies": {r for _, r in rows if r},
            "systems": set(data["system"]), "images": set(data["image"])}


def chat(counter, mix=None, units=300, rng=SECRETS) -> ChatRequest:
    request = synthetic_request(CHAT, units, rng, 64, counter, mix or SamplingMix())
    assert isinstance(request, ChatRequest)
    return request


def organic(temperature, top_p, system, turns=1, stop=()) -> ChatRequest:
    """A user's request: only its parameters and shape matter to the mix."""
    messages = [ChatMessage(role="system", content="You answer tersely.")] if system else []
    for i in range(turns - 1):
        messages += [ChatMessage(role="user", content=f"earlier question {i}"),
                     ChatMessage(role="assistant", content="an answer")]
    messages.append(ChatMessage(role="user", content="How do I reverse a list in Python?"))
    return ChatRequest(task=CHAT, messages=messages, temperature=temperature, top_p=top_p,
                       stop=list(stop))


def bare(text: str) -> set[str]:
    """What the corpus prompt under a user's opener and closer may be: each is added at most
    once, and a corpus prompt may itself begin like an opener ("Question: ...")."""
    heads = {text} | {text.removeprefix(o) for o in OPENERS if text.startswith(o)}
    return heads | {h.removesuffix(c) for h in heads for c in CLOSERS if h.endswith(c)}


def scene(prompt: str) -> str:
    """The corpus scene under an image prompt's style modifiers."""
    while any(prompt.endswith(", " + style) for style in STYLES):
        prompt = prompt.rsplit(", ", 1)[0]
    return prompt


def old_words(text: str) -> bool:
    words = text.split()
    return len(words) == 8 and set(words) <= OLD_WORDS


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def test_two_requests_essentially_never_share_a_prompt_or_an_image(counter):
    """200 draws: a few thousand prompts alone would repeat (the birthday bound); openers,
    closers, system prompts, earlier turns and style modifiers make repeats rare (measured: 1
    conversation in 100 runs of 200, image prompts 0.2 a run), so at most 2 may repeat."""
    conversations = {tuple((m.role, m.content) for m in chat(counter).messages)
                     for _ in range(200)}
    assert len(conversations) >= 198
    images = [synthetic_request("inpaint", 20, SECRETS, 64, None) for _ in range(200)]
    assert all(isinstance(r, InpaintRequest) for r in images)
    assert len({r.prompt for r in images}) >= 198
    assert len({r.init_image for r in images}) == len({r.mask_image for r in images}) == 200


def test_prompts_come_from_the_corpus_and_vary_in_length(counter, corpus):
    conversations = SamplingMix()
    for _ in range(200):
        conversations.record(organic(1.0, 1.0, system=True, turns=2))
    for r in [chat(counter, conversations) for _ in range(100)]:
        *earlier, last = r.messages
        assert last.role == "user" and bare(last.content) & corpus["prompts"]
        for m in earlier:
            known = {"system": corpus["systems"], "user": corpus["prompts"],
                     "assistant": corpus["replies"]}[m.role]
            assert m.content in known, m
    questions = SamplingMix()
    questions.record(organic(1.0, 1.0, system=False))
    lengths = [len(chat(counter, questions).messages[0].content) for _ in range(200)]
    assert len(set(lengths)) > 50 and max(lengths) > 3 * min(lengths)
    assert statistics.pstdev(lengths) > 20
    images = [synthetic_request("proteus-text-to-image", 10, SECRETS, 64, None).prompt
              for _ in range(100)]
    assert all(scene(p) in corpus["images"] for p in images)


def test_parameters_follow_the_recorded_organic_mix(counter):
    """300 requests at temperature 0.2, top_p 0.95 with a system prompt and 100 at 1.0 in three
    turns with a stop sequence: synthetic draws come out 3:1, each with its own parameters and
    shape. 2,000 draws: the share's standard deviation is 0.01, the bound 0.04."""
    mix = SamplingMix()
    for _ in range(300):
        mix.record(organic(0.2, 0.95, system=True))
    for _ in range(100):
        mix.record(organic(1.0, 1.0, system=False, turns=3, stop=["\n\n"]))
    requests = [chat(counter, mix) for _ in range(2000)]
    cool = [r for r in requests if r.temperature == 0.2]
    hot = [r for r in requests if r.temperature == 1.0]
    assert len(cool) + len(hot) == len(requests)
    assert abs(len(cool) / len(requests) - 0.75) < 0.04
    assert all(r.top_p == 0.95 and r.stop == [] and r.messages[0].role == "system"
               and [m.role for m in r.messages].count("user") == 1 for r in cool)
    assert all(r.top_p == 1.0 and r.stop == ["\n\n"] and r.messages[0].role == "user"
               for r in hot)
    three = [sum(m.role == "user" for m in r.messages) == 3 for r in hot]
    assert sum(three) / len(three) > 0.95  # unless no earlier turns fit the prompt's budget
    # the length is fixed where no stop sequence may end it: a short answer is invalid on receipt
    assert all(r.min_tokens == r.max_tokens for r in cool)
    assert all(r.min_tokens == 0 for r in hot)


def test_before_any_organic_request_the_stated_default_mix(counter):
    requests = [chat(counter) for _ in range(500)]
    assert {r.temperature for r in requests} == set(DEFAULT_TEMPERATURES)
    assert {r.top_p for r in requests} == {1.0} and all(r.stop == [] for r in requests)
    assert all([m.role for m in r.messages] == ["user"] for r in requests)


def test_the_organic_api_records_what_users_ask_for():
    class Store:
        async def io(self, fn, *args):
            return fn(*args)

    class Book:
        period, store = None, Store()

    class Traffic:
        def cost(self, message):
            return 10, 100

        def admits(self):
            return True

        async def reserving(self, call, attempt):
            return await call

    async def drain(stream):
        async for _ in stream:
            pass

    mix = SamplingMix()
    request = organic(0.3, 0.8, system=True, turns=2, stop=["END"])
    with pytest.raises(NoCapacity):
        asyncio.run(drain(Organic(Book(), Traffic(), mix=mix).chat(request)))
    assert mix.draw(SECRETS) == Sampling(0.3, 0.8, ("END",), True, 2)


@pytest.mark.parametrize("task", list(TASKS))
def test_the_cost_bound_holds_for_every_task_at_several_unit_sizes(task, counter):
    """What ``Traffic.cost`` reserves (a chat prompt as counted here or as the miner estimates
    it, whichever is more, plus max_tokens; steps x images) never exceeds the units asked, with
    the longest shapes users send."""
    mix = SamplingMix()
    mix.record(organic(0.7, 1.0, system=True, turns=6, stop=["###"]))
    mix.record(organic(0.0, 1.0, system=False))
    per = TASKS[task].units_per_synthetic
    least = smallest_request(task)
    for units in sorted({least, max(least, per // 2), per, 2 * per}):
        for _ in range(30):
            r = synthetic_request(task, units, SECRETS, 64, counter, mix)
            if isinstance(r, ChatRequest):
                head = max(counter.prompt_tokens(r), r.prompt_allowance())
                assert head + r.max_tokens <= units, (units, head, r.max_tokens)
            else:
                assert r.units == units


def test_a_classifier_of_the_old_tells_no_longer_separates_synthetic_from_organic(counter):
    """The tells before protocol 6: eight words of a 32-word list, temperature and top_p from two
    small sets, one of 8 noise images, a centred square mask. Words, images and masks match no
    synthetic request now; the parameters match synthetic requests as often as organic ones
    (here 60% of users send the OpenAI defaults, inside the old sets)."""
    users = [organic(1.0, 1.0, system=False)] * 60 + [organic(0.2, 0.95, system=True)] * 40
    mix = SamplingMix()
    for r in users:
        mix.record(r)
    requests = [chat(counter, mix) for _ in range(500)]

    def old_parameters(r: ChatRequest) -> bool:
        return r.temperature in OLD_TEMPERATURES and r.top_p in OLD_TOP_PS

    assert not any(old_words(m.content) for r in requests for m in r.messages)
    share = sum(map(old_parameters, requests)) / len(requests)
    assert abs(share - sum(map(old_parameters, users)) / len(users)) < 0.08  # 3.5 sd at 500

    size = 64
    old_images = [np.random.default_rng(v).integers(0, 256, (size, size, 3), dtype=np.uint8)
                  for v in range(8)]
    centred = np.zeros((size, size), dtype=np.uint8)
    centred[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    for _ in range(100):
        r = synthetic_request("inpaint", 20, SECRETS, size, None)
        assert isinstance(r, InpaintRequest)
        image = np.asarray(decoded(r.init_image))
        assert not any(np.array_equal(image, old) for old in old_images)
        assert not np.array_equal(np.asarray(decoded(r.mask_image)), centred)
        assert not old_words(r.prompt)


@pytest.mark.parametrize("size", [64, 512])
def test_images_are_valid_pngs_of_the_asked_size_and_masks_are_not_all_the_same(size):
    """A seeded rng: the spread of 10 mask centres is a statistic (a mask's centre has an sd of
    0.11 of the side over 400 seeds, so 10 from the operating system fell under 0.05 about once
    in 120 runs, and did in CI)."""
    centres = []
    masks = set()
    rng = random.Random(size)
    for task in ("proteus-image-to-image", "inpaint") * 10:
        r = synthetic_request(task, TASKS[task].units_per_synthetic, rng, size, None)
        assert isinstance(r, ImageToImageRequest | InpaintRequest)
        assert r.width == r.height == size and r.units == TASKS[task].units_per_synthetic
        image = decoded(r.init_image)
        assert image.size == (size, size) and image.mode == "RGB"
        assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 16  # not flat
        if isinstance(r, InpaintRequest):
            mask = decoded(r.mask_image)
            assert mask.size == (size, size) and mask.mode == "L"
            pixels = np.asarray(mask)
            assert set(np.unique(pixels)) <= {0, 255} and 0.25 * 255 <= pixels.mean() < 255
            masks.add(r.mask_image)
            ys, xs = np.nonzero(pixels)
            centres.append((xs.mean() / size, ys.mean() / size))
    assert len(masks) == 10
    assert statistics.pstdev(x for x, _ in centres) > 0.05  # anywhere, not centred
    assert statistics.pstdev(y for _, y in centres) > 0.05


def test_every_choice_comes_from_the_rng_given(counter):
    """Nothing but the ``rng`` decides a request: the validator's is the operating system's
    secrets, so nothing a miner can replay; a seeded one repeats the request exactly."""
    mix = SamplingMix()
    mix.record(organic(0.5, 0.9, system=True, turns=2))
    for task in ("chat-llama-3", "proteus-text-to-image", "inpaint"):
        a, b = (synthetic_request(task, 300 if TASKS[task].kind is Kind.CHAT else 20,
                                  random.Random(42), 64, counter, mix) for _ in range(2))
        assert a == b
        assert a != synthetic_request(task, 300 if TASKS[task].kind is Kind.CHAT else 20,
                                      random.Random(43), 64, counter, mix)


def test_the_prompt_budget_in_characters_matches_the_miners_allowance():
    for tokens in range(33, 400):
        fits = chars_within(tokens)
        allowance = ChatRequest(task=CHAT, messages=[ChatMessage(role="user", content="x" * fits)]
                                ).prompt_allowance()
        over = ChatRequest(task=CHAT, messages=[ChatMessage(role="user", content="x" * (fits + 1))]
                           ).prompt_allowance()
        assert allowance <= tokens < over
