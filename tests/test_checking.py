"""Quality checking (docs/protocol.md §8) against adversarial miners built from the real tiny
engines: each cheat scores 0, honest answers pass."""

import asyncio
import base64
import dataclasses
import io
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.backends import load_engine, tiny_seed
from core.backends.transformers_chat import TransformersChat
from core.checking.chat import check_chat
from core.checking.images import check_images
from core.checking.service import Checker, Job, quality_of
from core.checking.trajectory import STEP_TOLERANCE, latents_needed, openings_of, pick_steps
from core.protocol import (
    ChatChunk,
    ChatRequest,
    ChatToken,
    ImageToImageRequest,
    InpaintRequest,
    TextToImageRequest,
    TrajectoryRequest,
    commitment_key,
)
from core.records import Outcome, RequestRecord
from core.storage import AsyncStore, open_store
from tests.records import record


@pytest.fixture(scope="module")
def chat(tiny_chat):
    return tiny_chat


@pytest.fixture(scope="module")
def reference(tiny_chat_reference):
    return tiny_chat_reference  # the validator's own copy


@pytest.fixture(scope="module")
def images(tiny_images):
    return tiny_images


def chat_request(seed, temperature=0.8, top_p=0.95, max_tokens=48):
    return ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": f"tell {seed}"}],
                       max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)


def answer(engine, request):
    tokens = list(engine.tokens(request))
    final = ChatChunk(done=True, prompt_tokens=len(engine.prompt_ids(request)),
                      completion_tokens=len(tokens))
    return tokens, final


@pytest.mark.parametrize("seed, temperature, top_p", [
    (s, t, p) for s, (t, p) in enumerate([(0.0, 1.0), (0.7, 0.9), (1.0, 1.0), (1.0, 0.9)] * 5)])
def test_honest_chat_passes(chat, reference, seed, temperature, top_p):
    request = chat_request(seed, temperature, top_p)
    verdict = check_chat(reference, request, *answer(chat, request))
    assert verdict.passed, verdict.reason


def test_a_different_model_fails(reference):
    other = TransformersChat.tiny(tiny_seed("chat-mixtral"))
    request = chat_request(1)
    verdict = check_chat(reference, request, *answer(other, request))
    assert not verdict.passed and "logprobs differ" in verdict.reason


def test_random_tokens_with_made_up_logprobs_fail(chat, reference):
    request = chat_request(2)
    rng = random.Random(0)
    tokens = [ChatToken(token_id=rng.randrange(5, 261), text="?", logprob=-0.5)
              for _ in range(request.max_tokens)]
    final = ChatChunk(done=True, prompt_tokens=len(chat.prompt_ids(request)),
                      completion_tokens=len(tokens))
    assert not check_chat(reference, request, tokens, final).passed


def test_random_tokens_with_the_models_own_logprobs_fail_the_likelihood_test(chat, reference):
    """A miner that knows the model but does not sample from it (random text, true logprobs)."""
    import torch

    request = chat_request(3, temperature=1.0, top_p=1.0, max_tokens=64)
    rng = random.Random(1)
    ids = [rng.randrange(5, 261) for _ in range(request.max_tokens)]
    logprobs = torch.log_softmax(reference.completion_logits(request, ids), -1)
    tokens = [ChatToken(token_id=i, text="?", logprob=float(logprobs[n, i]))
              for n, i in enumerate(ids)]
    final = ChatChunk(done=True, prompt_tokens=len(chat.prompt_ids(request)),
                      completion_tokens=len(tokens))
    verdict = check_chat(reference, request, tokens, final)
    assert not verdict.passed and "less likely" in verdict.reason


def test_truncated_text_fails(chat, reference):
    request = chat_request(4, max_tokens=40)
    tokens, _ = answer(chat, request)
    cut = tokens[:20]
    final = ChatChunk(done=True, prompt_tokens=len(chat.prompt_ids(request)), completion_tokens=20)
    verdict = check_chat(reference, request, cut, final)
    assert not verdict.passed and "truncated" in verdict.reason


def test_charging_more_tokens_than_used_fails(chat, reference):
    request = chat_request(5)
    tokens, final = answer(chat, request)
    padded = final.model_copy(update={"prompt_tokens": final.prompt_tokens + 30})
    verdict = check_chat(reference, request, tokens, padded)
    assert not verdict.passed and "charged" in verdict.reason


def image_requests(init):
    common = dict(prompt="a red boat", steps=4, height=64, width=64)
    return (
        [TextToImageRequest(task="proteus-text-to-image", seed=s, **common) for s in range(4)]
        + [
            ImageToImageRequest(task="proteus-image-to-image", seed=s, init_image=init, **common)
            for s in range(3)
        ]
        + [
            InpaintRequest(task="inpaint", seed=s, init_image=init, mask_image=init, **common)
            for s in range(3)
        ]
    )


def respond(engine, request):
    return engine.answer(request)


def opened(engine, request, response, rng=None):
    """What the miner's ``engine`` opens of ``response`` at steps drawn as the checker draws."""
    steps = pick_steps(response, rng or random.Random(0))
    asked = latents_needed(steps, len(response.trajectory[0]))
    answer = engine.open(TrajectoryRequest(task=request.task, latents=asked,
                                           key=commitment_key(response.trajectory)))
    return openings_of(steps, asked, answer)


@pytest.fixture(scope="module")
def init(images):
    req = TextToImageRequest(task="proteus-text-to-image", prompt="x", steps=2, height=64, width=64)
    return base64.b64encode(images["proteus-text-to-image"].generate(req)[0]).decode()


def test_honest_images_pass(images, init):
    reference = {t: load_engine(t) for t in images}
    for request in image_requests(init):
        engine = images[request.task]
        response = respond(engine, request)
        verdict = check_images(reference[request.task], request, response,
                               opened(engine, request, response))
        assert verdict.passed, verdict.reason


def test_without_a_step_tolerance_the_openings_still_bind_and_the_image_is_regenerated(images):
    """As ``--check gpu`` judges (its float16 step tolerance unmeasured): an honest answer
    passes, another seed's image fails the whole-image comparison, and openings that do not
    open the commitment fail."""
    engine = images["proteus-text-to-image"]
    first = TextToImageRequest(task="proteus-text-to-image", prompt="a cat", steps=4, height=64,
                               width=64, seed=1)
    honest = respond(engine, first)
    assert check_images(engine, first, honest, opened(engine, first, honest),
                        tolerance=None).passed
    again = first.model_copy(update={"seed": 2})
    verdict = check_images(engine, again, honest, opened(engine, again, honest), tolerance=None)
    assert not verdict.passed and "differ from the reference's" in verdict.reason
    other = respond(engine, again)
    verdict = check_images(engine, first, honest, opened(engine, again, other), tolerance=None)
    assert not verdict.passed and "not open" in verdict.reason


def test_a_cached_image_for_a_new_seed_fails(images):
    engine = images["proteus-text-to-image"]
    first = TextToImageRequest(task="proteus-text-to-image", prompt="a cat", steps=4, height=64,
                               width=64, seed=1)
    cached = respond(engine, first)
    again = first.model_copy(update={"seed": 2})
    verdict = check_images(engine, again, cached, opened(engine, again, cached))
    assert not verdict.passed and "step 0 re-runs" in verdict.reason


def greyscale(image: Image.Image) -> Image.Image:
    return image.convert("L").convert("RGB")


def chroma_negated(image: Image.Image) -> Image.Image:
    """The same luma, every colour turned to its opposite."""
    a = np.asarray(image, dtype=np.float32)
    luma = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return Image.fromarray(np.clip(2 * luma[..., None] - a, 0, 255).astype(np.uint8))


def red_blue_swapped(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image)[..., ::-1].copy())


def black_box(image: Image.Image) -> Image.Image:
    """A black square over 4% of the image."""
    out = image.copy()
    w, h = out.size
    ImageDraw.Draw(out).rectangle([0, 0, w // 5 - 1, h // 5 - 1], fill=(0, 0, 0))
    return out


def spam_text(image: Image.Image) -> Image.Image:
    out = image.copy()
    draw = ImageDraw.Draw(out)
    for row in range(0, out.size[1], 24):
        draw.text((4, row), "BUY SCAMCOIN evil.example " * 3, fill=(255, 0, 0))
    return out


def checkerboard(image: Image.Image) -> Image.Image:
    """+-60 on alternate pixels: the same at 32x32 as the image."""
    a = np.asarray(image, dtype=np.float32)
    board = ((np.indices(a.shape[:2]).sum(0) % 2) * 2 - 1)[..., None] * 60
    return Image.fromarray(np.clip(a + board, 0, 255).astype(np.uint8))


COLOUR = [greyscale, chroma_negated, red_blue_swapped]
LOCAL = [black_box, spam_text, checkerboard]


def tampered(response, openings, edit):
    """The honest answer and openings with ``edit`` applied to the PNG, committed as sent (its
    sha256, and the RGB thumbnail of the edited image), as a miner delivering an altered copy of
    the image its honest trajectory decodes to would."""
    from core.backends.diffusers_images import png, proof

    image = edit(Image.open(io.BytesIO(openings.images[0])).convert("RGB"))
    data = png(image)
    forged = response.model_copy(update={"proofs": [proof(image, data)]})
    return forged, dataclasses.replace(openings, images=[data])


def altered_verdicts(engine, edit, tolerance):
    """For 3 seeds: the honest answer passes ``check_images`` at ``tolerance`` (asserted), and the
    verdict on its copy altered by ``edit``."""
    for seed in range(3):
        request = TextToImageRequest(task="proteus-text-to-image", prompt="a red boat", steps=4,
                                     height=64, width=64, seed=seed)
        honest = respond(engine, request)
        openings = opened(engine, request, honest)
        assert check_images(engine, request, honest, openings, tolerance=tolerance).passed
        forged, sent = tampered(honest, openings, edit)
        yield check_images(engine, request, forged, sent, tolerance=tolerance)


@pytest.mark.parametrize("edit", COLOUR + LOCAL, ids=lambda e: e.__name__)
def test_an_altered_copy_of_the_honest_image_fails(images, edit):
    """The honest trajectory committed and opened, its image altered (colour gone, swapped or
    negated at the same luma; a black box over 4%; red spam text; a +-60 checkerboard): the
    comparison with the decode of the miner's final latent, in RGB at full resolution, fails it
    (every one passed the 32x32 grey comparison)."""
    for verdict in altered_verdicts(images["proteus-text-to-image"], edit, STEP_TOLERANCE):
        assert not verdict.passed and "from its final latent" in verdict.reason, verdict.reason


@pytest.mark.parametrize("edit", COLOUR, ids=lambda e: e.__name__)
def test_a_colour_altered_copy_fails_the_whole_image_comparison_too(images, edit):
    """As ``--check gpu`` judges (the image regenerated whole, 32x32 RGB thumbnails)."""
    for verdict in altered_verdicts(images["proteus-text-to-image"], edit, None):
        assert not verdict.passed and "differ from the reference's" in verdict.reason, (
            verdict.reason)


def test_a_thumbnail_without_the_images_colour_fails(images):
    """The PNG honest, its proof's thumbnail a grey copy: the thumbnails compare in RGB."""
    engine = images["proteus-text-to-image"]
    request = TextToImageRequest(task="proteus-text-to-image", prompt="a red boat", steps=4,
                                 height=64, width=64, seed=0)
    honest = respond(engine, request)
    small = Image.open(io.BytesIO(base64.b64decode(honest.proofs[0].thumbnail)))
    out = io.BytesIO()
    greyscale(small.convert("RGB")).save(out, format="PNG")
    proof = honest.proofs[0].model_copy(update={"thumbnail": base64.b64encode(
        out.getvalue()).decode()})
    forged = honest.model_copy(update={"proofs": [proof]})
    verdict = check_images(engine, request, forged, opened(engine, request, honest))
    assert not verdict.passed and "thumbnail is" in verdict.reason, verdict.reason


def test_charging_more_steps_than_requested_fails(images):
    engine = images["proteus-text-to-image"]
    request = TextToImageRequest(task="proteus-text-to-image", prompt="a", steps=3, height=64,
                                 width=64)
    overcharged = respond(engine, request).model_copy(update={"units": 9})
    assert "charged 9 steps" in check_images(engine, request, overcharged, None).reason


def test_an_answer_whose_trajectory_is_not_opened_fails(images):
    engine = images["proteus-text-to-image"]
    request = TextToImageRequest(task="proteus-text-to-image", prompt="a", steps=3, height=64,
                                 width=64)
    verdict = check_images(engine, request, respond(engine, request), None)
    assert not verdict.passed and "no trajectory opened" in verdict.reason


def test_a_failed_check_is_quality_zero_and_a_passed_one_the_speed_factor(chat):
    request = chat_request(6)
    tokens, final = answer(chat, request)
    honest = Job(1, 7, "chat-llama-3", request, (tokens, final), 0.1, final.units)
    assert quality_of(honest, "cpu") == (1.0, "")
    slow = Job(1, 7, "chat-llama-3", request, (tokens, final), 1e6, final.units)
    assert quality_of(slow, "cpu")[0] == 0.0
    lying = Job(1, 7, "chat-llama-3", request,
                (tokens, final.model_copy(update={"prompt_tokens": 1})), 0.1, final.units)
    quality, reason = quality_of(lying, "cpu")
    assert quality == 0.0 and "charged" in reason


def test_checker_samples_queues_boundedly_and_writes_quality(chat, tmp_path):
    store = open_store(str(tmp_path / "v.sqlite3"))
    checker = Checker(AsyncStore(store), "cpu", rate=0.0, max_queue=2)
    wanted = [checker.wants(7, "hk", "chat-llama-3") for _ in range(20)]
    assert sum(wanted) == 1  # one drawn answer of the period; rate 0: no more
    request = chat_request(8)
    tokens, final = answer(chat, request)

    async def main():
        ids = [record(store, RequestRecord(7, "hk", "chat-llama-3", False, Outcome.OK,
                                          final.units, 0.1)) for _ in range(4)]
        for i in ids:  # four jobs before the worker first runs, into a queue of two
            checker.submit(Job(i, 7, "chat-llama-3", request, (tokens, final), 0.1, final.units))
        await checker.drain(7, timeout=60)
        await checker.close()
        return ids

    ids = asyncio.run(main())
    quality = {r_id: r.quality for r_id, r in zip(ids, store.records(7))}
    assert checker.stats.dropped == 2 and checker.stats.checked == 2
    assert [quality[i] for i in ids] == [None, None, 1.0, 1.0]  # the oldest were dropped


def stop_case(chat, seed=3):
    """A request whose unconstrained completion holds some text, asked again with that text as a
    stop sequence."""
    free = chat_request(seed, 1.0, 1.0, max_tokens=40)
    pieces = [t.text for t in chat.tokens(free)]
    text = "".join(pieces)
    sequence = next(text[i:i + 3] for i in range(len(pieces[0]) + 1, len(text) - 3)
                    if text[i:i + 3].strip() and "\ufffd" not in text[i:i + 3])
    return free.model_copy(update={"stop": [sequence]}), sequence


def test_a_completion_ends_at_its_stop_sequence_and_the_checker_knows_why(chat, reference):
    from core.protocol import stop_at

    request, sequence = stop_case(chat)
    tokens, final = answer(chat, request)
    text = "".join(t.text for t in tokens)
    assert len(tokens) < request.max_tokens and tokens[-1].token_id not in reference.eos
    # it ends with the token that completes the sequence, the first place it occurs
    assert stop_at(text, [sequence]) is not None
    assert stop_at("".join(t.text for t in tokens[:-1]), [sequence]) is None
    assert check_chat(reference, request, tokens, final).passed
    # one token short of it: truncated; the same tokens asked without a stop sequence: truncated
    short = ChatChunk(done=True, prompt_tokens=final.prompt_tokens,
                      completion_tokens=len(tokens) - 1)
    assert "truncated" in check_chat(reference, request, tokens[:-1], short).reason
    unasked = request.model_copy(update={"stop": []})
    assert "truncated" in check_chat(reference, unasked, tokens, final).reason


def test_a_completion_that_runs_past_its_stop_sequence_fails(chat, reference):
    request, sequence = stop_case(chat)
    free = request.model_copy(update={"stop": []})
    tokens, final = answer(chat, free)  # the same seed, ignoring the stop sequence
    verdict = check_chat(reference, request, tokens, final)
    assert not verdict.passed and "past a stop sequence" in verdict.reason


def test_the_api_text_stops_before_the_sequence_however_it_streams():
    from core.openai_wire import StopFilter

    text = "alpha beta STOP gamma"
    for cuts in ([], [8], [11, 12, 13], list(range(1, len(text)))):
        bounds = [0, *cuts, len(text)]
        f = StopFilter(["STOP", "zz"])
        out = "".join(f.feed(text[a:b]) for a, b in zip(bounds, bounds[1:])) + f.flush()
        assert out == "alpha beta " and f.stopped
    f = StopFilter(["STOP"])
    assert f.feed("no sto") + f.feed("p here") + f.flush() == "no stop here" and not f.stopped


def test_gpu_references_load_each_image_checkpoint_once(monkeypatch):
    from core.backends.diffusers_images import DiffusersImages
    from core.checking.service import References
    from core.tasks import TASKS

    loads = []

    def load(model, kind, **kw):  # stands in for a production checkpoint on a GPU
        loads.append(model)
        return DiffusersImages(DiffusersImages.tiny_pipeline(1), kind)

    monkeypatch.setattr(DiffusersImages, "from_pretrained", staticmethod(load))
    refs = References("gpu")
    engines = {t: refs.engine(t) for t in ("proteus-text-to-image", "proteus-image-to-image",
                                            "inpaint")}
    assert loads == [TASKS["proteus-text-to-image"].model, TASKS["inpaint"].model]
    assert engines["proteus-image-to-image"].kind is TASKS["proteus-image-to-image"].kind
    shared = engines["proteus-image-to-image"].pipeline.unet
    assert shared is engines["proteus-text-to-image"].pipeline.unet


def test_a_failed_check_stores_why_for_the_miners_feedback(chat, tmp_path):
    from core.checking.service import Checker

    store = open_store(str(tmp_path / "v.sqlite3"))
    checker = Checker(AsyncStore(store), "cpu", rate=1.0)
    request = chat_request(9)
    tokens, final = answer(chat, request)
    overcharged = final.model_copy(update={"prompt_tokens": final.prompt_tokens + 50})

    async def main():
        record_id = record(store, RequestRecord(7, "hk", "chat-llama-3", False, Outcome.OK,
                                               overcharged.units, 0.1))
        checker.submit(Job(record_id, 7, "chat-llama-3", request, (tokens, overcharged), 0.1,
                           overcharged.units))
        await checker.drain(7, timeout=60)
        await checker.close()

    asyncio.run(main())
    [(why, n)] = store.failed_checks(7, "hk")["chat-llama-3"].items()
    assert n == 1 and why.startswith("charged") and store.records(7)[0].quality == 0.0
    assert store.failed_checks(7, "someone else") == {}


def test_the_spare_replay_miss_never_pays_for_ending_early():
    from core.checking.chat import Evidence, replay

    rounding = Evidence(0.0, 0.0, 0.0, 0.0, 0.0, gaps=(0.0, 3.0, 0.0, 0.0))
    stopped = Evidence(0.0, 0.0, 0.0, 0.0, 0.0, gaps=(0.0, 0.0, 0.0, 3.0))
    assert replay(rounding, ended_early=True).passed  # one miss mid-way: rounding's spare
    assert replay(stopped).passed  # ran to max_tokens: its last token ended nothing
    verdict = replay(stopped, ended_early=True)
    assert not verdict.passed and "ended where" in verdict.reason
