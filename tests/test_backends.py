"""The CPU back end and the loading code production uses, on tiny models saved to disk."""

import asyncio
import base64
import io

import numpy as np
import pytest
from PIL import Image

from core.backends import load_engine
from core.backends.diffusers_images import DiffusersImages
from core.backends.spec import EngineSpec
from core.protocol import ChatRequest, ImageToImageRequest, InpaintRequest, TextToImageRequest
from core.tasks import Kind

CHAT = ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": "tell me"}],
                   max_tokens=24, temperature=0.9, top_p=0.95, seed=11)


def ids(engine, request=CHAT):
    return [t.token_id for t in engine.tokens(request)]


@pytest.fixture(scope="module")
def chat(tiny_chat):
    return tiny_chat


@pytest.fixture(scope="module")
def images(tiny_images):
    return tiny_images["proteus-text-to-image"]


def test_chat_is_deterministic_for_a_seed_and_varies_with_it(chat):
    assert ids(chat) == ids(chat)
    assert ids(chat) != ids(chat, CHAT.model_copy(update={"seed": 12}))


def test_greedy_chat_picks_the_most_likely_token(chat):
    greedy = list(chat.tokens(CHAT.model_copy(update={"temperature": 0.0})))
    assert all(t.logprob > np.log(0.05) for t in greedy[:3])


def test_async_stream_yields_the_same_tokens_and_stops_when_abandoned(chat):
    async def first(n):
        got = []
        async for batch in chat.stream(CHAT):
            got.extend(t.token_id for t in batch)
            if len(got) >= n:
                break  # the consumer leaves: the sampling thread must stop, not run on
        return got[:n]

    assert asyncio.run(first(100)) == ids(chat)
    assert asyncio.run(first(3)) == ids(chat)[:3]


def test_tasks_on_other_models_answer_differently(chat):
    mixtral = load_engine("chat-mixtral")
    assert ids(mixtral, CHAT.model_copy(update={"task": "chat-mixtral"})) != ids(chat)


def test_chat_save_and_load_path(chat, tmp_path):
    chat.save_pretrained(str(tmp_path / "llama"))
    loaded = load_engine("chat-llama-3", EngineSpec(model=str(tmp_path / "llama")))
    assert ids(loaded) == ids(chat)
    assert loaded.prompt_ids(CHAT) == chat.prompt_ids(CHAT)


def decode(png):
    return np.asarray(Image.open(io.BytesIO(png)))


def test_images_are_deterministic_and_steps_matter(images):
    req = TextToImageRequest(task="proteus-text-to-image", prompt="a red cat", steps=4,
                             height=64, width=64, seed=5)
    a, b = images.generate(req), images.generate(req)
    assert a == b and decode(a[0]).shape == (64, 64, 3)
    other = images.generate(req.model_copy(update={"seed": 6}))
    assert not np.array_equal(decode(other[0]), decode(a[0]))


def test_diffusers_save_and_load_path(images, tmp_path):
    images.pipeline.save_pretrained(tmp_path / "sd")
    loaded = DiffusersImages.from_pretrained(str(tmp_path / "sd"), Kind.TEXT_TO_IMAGE, device="cpu")
    req = TextToImageRequest(task="proteus-text-to-image", prompt="a boat", steps=3, height=64,
                             width=64, seed=1)
    assert np.abs(decode(loaded.generate(req)[0]).astype(int)
                  - decode(images.generate(req)[0]).astype(int)).max() <= 1


def test_image_to_image_and_inpaint(images):
    first = images.generate(TextToImageRequest(task="proteus-text-to-image", prompt="x", steps=2,
                                               height=64, width=64))[0]
    b64 = base64.b64encode(first).decode()
    i2i = DiffusersImages(images.pipeline, Kind.IMAGE_TO_IMAGE)
    out = i2i.generate(ImageToImageRequest(task="proteus-image-to-image", prompt="y", steps=4,
                                           height=64, width=64, init_image=b64))
    assert decode(out[0]).shape == (64, 64, 3)
    inpaint = DiffusersImages(images.pipeline, Kind.INPAINT)
    out = inpaint.generate(InpaintRequest(task="inpaint", prompt="y", steps=3, height=64, width=64,
                                          init_image=b64, mask_image=b64, num_images=2))
    assert len(out) == 2


@pytest.mark.parametrize("init", ["not base64!", base64.b64encode(b"not an image").decode()])
def test_bad_init_image_is_a_value_error(images, init):
    i2i = DiffusersImages(images.pipeline, Kind.IMAGE_TO_IMAGE)
    with pytest.raises(ValueError):
        i2i.generate(ImageToImageRequest(task="proteus-image-to-image", prompt="y", steps=2,
                                         height=64, width=64, init_image=init))


def test_streamed_text_keeps_characters_whole_and_leaves_out_the_eos_text():
    from core.backends import tiny
    from core.backends.tokens import Detokenizer, eos_ids

    tokenizer = tiny.chat_tokenizer()
    text = "héllo wörld 日本 ✓"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(ids) > len(text) + 1  # one token per byte: characters are split over tokens
    stream = Detokenizer(tokenizer)
    pieces = [stream.add(i) for i in ids]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert eos_ids(tokenizer, type("Config", (), {"eos_token_id": [1, 4]})()) == {1, 4}


def test_a_worker_whose_engine_died_says_so_on_its_probes():
    from fastapi.testclient import TestClient

    from core.worker.app import build_worker_app

    class Dead:
        def prompt_ids(self, request):
            return [1]

        def healthy(self) -> bool:
            return False

    token = "t" * 20
    with TestClient(build_worker_app("chat-llama-3", Dead(), token)) as client:
        assert client.get("/health").status_code == 503
        assert (
            client.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code
            == 503
        )


def test_loading_an_image_engine_prints_no_torchvision_fallback_notices():
    """The PIL fallback is what the project uses: its notice on every start told operators
    nothing."""
    import subprocess
    import sys
    from pathlib import Path

    run = subprocess.run([sys.executable, "-c", "from core.backends import load_engine; "
                          "load_engine('proteus-text-to-image')"],
                         cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "torchvision" not in run.stderr + run.stdout
