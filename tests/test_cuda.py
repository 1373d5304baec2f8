"""The CUDA paths of the back ends and the checker, on tiny models saved to disk and loaded as
production loads them (chat bfloat16, images float16). Skipped where torch sees no GPU (CI);
run on a GPU machine with ``pytest -m cuda``."""

import pytest
import torch

from core.backends.diffusers_images import DiffusersImages
from core.backends.transformers_chat import TransformersChat
from core.checking.chat import check_chat
from core.checking.images import check_images, distance
from core.checking.trajectory import opened_in_process, pick_steps
from core.protocol import ChatChunk, ChatRequest
from core.synthetic import synthetic_request
from core.tasks import TASKS

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU"),
]


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    TransformersChat.tiny(1234).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    DiffusersImages.tiny_pipeline(1234).save_pretrained(str(folder))
    return folder


def requests(n: int):
    return [ChatRequest(task="chat-llama-3", max_tokens=48, seed=100 + i,
                        temperature=(0.0, 0.7, 1.0)[i % 3], top_p=(0.9, 1.0)[i % 2],
                        messages=[{"role": "user", "content": f"question {i}"}])
            for i in range(n)]


def answer(engine: TransformersChat, request: ChatRequest):
    tokens = list(engine.tokens(request))
    final = ChatChunk(done=True, prompt_tokens=len(engine.prompt_ids(request)),
                      completion_tokens=len(tokens))
    return tokens, final


def test_chat_on_cuda_is_deterministic_and_passes_both_references(chat_folder):
    miner = TransformersChat.from_pretrained(str(chat_folder), device="cuda")
    assert miner.model.dtype == torch.bfloat16 and miner.model.device.type == "cuda"
    gpu_reference = TransformersChat.from_pretrained(str(chat_folder), device="cuda")
    cpu_reference = TransformersChat.from_pretrained(str(chat_folder))
    for request in requests(12):
        tokens, final = answer(miner, request)
        assert [t.token_id for t in tokens] == [t.token_id for t in miner.tokens(request)]
        for reference in (gpu_reference, cpu_reference):
            verdict = check_chat(reference, request, tokens, final)
            assert verdict.passed, (request, verdict.reason)


def test_chat_from_another_model_on_cuda_fails(chat_folder, tmp_path):
    TransformersChat.tiny(999).save_pretrained(str(tmp_path / "other"))
    other = TransformersChat.from_pretrained(str(tmp_path / "other"), device="cuda")
    reference = TransformersChat.from_pretrained(str(chat_folder), device="cuda")
    failed = [not check_chat(reference, r, *answer(other, r)).passed for r in requests(6)]
    assert all(failed)


@pytest.mark.parametrize("task", ["proteus-text-to-image", "proteus-image-to-image", "inpaint"])
def test_images_on_cuda_are_deterministic_and_pass_the_gpu_reference(image_folder, task):
    """A CUDA float16 miner against the reference ``--check gpu`` loads (CUDA float16). A CPU
    float32 reference differs by up to 0.051 on the tiny pipeline (measured on an H200,
    scripts/bench_image_tolerance.py): beyond the checker's bound, so only a GPU judges a GPU."""
    import random

    kind = TASKS[task].kind
    miner = DiffusersImages.from_pretrained(str(image_folder), kind, device="cuda")
    assert miner.pipeline.unet.dtype == torch.float16
    reference = DiffusersImages.from_pretrained(str(image_folder), kind, device="cuda")
    request = synthetic_request(task, 12, random.Random(7), 128, None)
    response = miner.answer(request)
    openings = opened_in_process(miner, request, response, pick_steps(response, random.Random(1)))
    first, again = openings.images, miner.generate(request)  # the PNGs it kept, answered
    assert distance(first[0], again[0]) < 0.005
    # as --check gpu judges it: the openings open the commitment, the image regenerated whole
    verdict = check_images(reference, request, response, openings, tolerance=None)
    assert verdict.passed, verdict.reason
    cpu = DiffusersImages.from_pretrained(str(image_folder), kind, device="cpu")
    assert distance(first[0], cpu.generate(request)[0]) < 0.08
