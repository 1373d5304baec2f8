"""Trajectory commitments (docs/protocol.md §8) on the tiny CPU pipeline: what the miner commits,
keeps and opens, what the checker re-runs, and that every way an image answer can be unreadable
is the miner's failed check or an invalid answer, never an exception."""

from __future__ import annotations

import asyncio
import base64
import random
import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.backends import load_engine
from core.backends.diffusers_images import DiffusersImages, Trajectories
from core.chain import Neuron
from core.checking.images import check_images, png_size
from core.checking.trajectory import (
    K_STEPS,
    Openings,
    opened_in_process,
    pick_steps,
    replay,
)
from core.protocol import (
    ImageResponse,
    ImageToImageRequest,
    InpaintRequest,
    TextToImageRequest,
    TrajectoryRequest,
    commitment_key,
    latent_digest,
    pipeline_steps,
    png_digest,
)
from core.records import Outcome
from core.tasks import Kind
from core.transport.client import Reply
from core.validator import dispatch
from core.validator.openings import OpeningFailed, fetch_openings
from tests.test_miner_app import CONFIG, engines, miner, post  # noqa: F401  (fixtures)

T2I = "proteus-text-to-image"


@pytest.fixture(scope="module")
def tiny(tiny_images, tiny_image_references):
    """A miner's engine and the validator's own reference, per kind."""
    return tiny_images, tiny_image_references


def t2i(steps=10, seed=3, **kw):
    return TextToImageRequest(task=T2I, prompt="a lighthouse", steps=steps, height=64, width=64,
                              seed=seed, **kw)


opened = opened_in_process


def png_of(width: int, height: int, rows: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    head = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


BOMB = png_of(20000, 20000, b"\x00" * 20001)  # a few dozen bytes: ~400 MB of pixels claimed
SMALL = png_of(16, 16, (b"\x00" + b"\x80" * 16) * 16)


def test_the_commitment_has_a_digest_per_step_of_every_image_and_opens_to_it(tiny):
    engines_, _ = tiny
    request = t2i(steps=6, num_images=2)
    answer = engines_[T2I].answer(request)
    assert [len(t) for t in answer.trajectory] == [6, 6] and answer.trajectory[0] != \
        answer.trajectory[1]
    openings = opened(engines_[T2I], request, answer, (0, 2))
    assert sorted(openings.latents) == [1, 2, 3, 6]
    for i, images in openings.latents.items():
        assert [latent_digest(raw) for raw in images] == [t[i - 1] for t in answer.trajectory]
        assert len(images[0]) == 4 * 32 * 32 * 4  # the tiny VAE downscales 2: 4 x 32 x 32 float32
    # a key never made, or a step past the answer's, opens nothing
    assert engines_[T2I].open(TrajectoryRequest(task=T2I, key="0" * 64, latents=[1])) is None
    assert engines_[T2I].trajectories.open(commitment_key(answer.trajectory), [7]) is None


@pytest.mark.parametrize("kind,strength", [("proteus-image-to-image", 0.75),
                                           ("proteus-image-to-image", 0.5),
                                           ("inpaint", 1.0), ("inpaint", 0.6)])
def test_the_committed_step_count_is_what_the_pipeline_runs(tiny, kind, strength):
    engines_, _ = tiny
    init = base64.b64encode(engines_[T2I].generate(t2i(steps=2))[0]).decode()
    cls = ImageToImageRequest if kind != "inpaint" else InpaintRequest
    extra = {"mask_image": init} if kind == "inpaint" else {}
    request = cls(task=kind, prompt="a boat", steps=9, height=64, width=64, init_image=init,
                  strength=strength, **extra)
    answer = engines_[kind].answer(request)
    assert len(answer.trajectory[0]) == pipeline_steps(request) == min(int(9 * strength), 9)


def test_pick_steps_always_opens_step_0_and_k_distinct_others():
    class Committed:
        def __init__(self, n):
            self.trajectory = [["0" * 64] * n]

    rng = random.Random(5)
    for n in (1, 3, K_STEPS + 1, 30):
        steps = pick_steps(Committed(n), rng)  # type: ignore[arg-type]
        assert steps[0] == 0 and len(set(steps)) == len(steps) == min(n, K_STEPS + 1)
        assert max(steps) < n


def skip_every_other_unet_call(engine):
    """The hostile miner's cheat: the UNet on every other step, its output reused between."""
    forward, calls, cache = engine.pipeline.unet.forward, [0], {}

    def every_other(sample, *args, **kwargs):
        if calls[0] % 2 == 0:
            cache["out"] = forward(sample, *args, **kwargs)
        calls[0] += 1
        return cache["out"]

    engine.pipeline.unet.forward = every_other


def test_half_the_steps_is_caught_at_a_faked_step_and_passes_at_a_real_one():
    cheat, reference = load_engine(T2I), load_engine(T2I)
    skip_every_other_unet_call(cheat)
    request = t2i(steps=10)
    answer = cheat.answer(request)
    real = check_images(reference, request, answer, opened(cheat, request, answer, (0, 2, 4)))
    assert real.passed, real.reason  # the steps it did run re-run exactly
    faked = check_images(reference, request, answer, opened(cheat, request, answer, (0, 3)))
    assert not faked.passed and faked.reason.startswith("step 3 re-runs")


def test_another_scheduler_or_another_model_fails_at_step_0(tiny):
    from diffusers import DPMSolverMultistepScheduler

    _, references = tiny
    request = t2i(steps=8)
    other = load_engine(T2I)
    other.pipeline.scheduler = DPMSolverMultistepScheduler.from_config(
        other.pipeline.scheduler.config)
    wrong = DiffusersImages(DiffusersImages.tiny_pipeline(999), Kind.TEXT_TO_IMAGE)
    for engine in (other, wrong):
        answer = engine.answer(request)
        verdict = check_images(references[T2I], request, answer,
                               opened(engine, request, answer, (0, 5)))
        assert not verdict.passed and verdict.reason.startswith("step 0 re-runs"), verdict


def test_a_multistep_scheduler_is_replaced_by_euler_and_cannot_be_a_reference():
    from diffusers import DPMSolverMultistepScheduler

    pipeline = DiffusersImages.tiny_pipeline(1)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    engine = DiffusersImages(pipeline, Kind.TEXT_TO_IMAGE)
    assert type(engine.pipeline.scheduler).__name__ == "EulerDiscreteScheduler"
    request = t2i(steps=4)
    answer = engine.answer(request)
    assert check_images(engine, request, answer, opened(engine, request, answer, (0, 2))).passed
    engine.pipeline.scheduler = DPMSolverMultistepScheduler.from_config(
        engine.pipeline.scheduler.config)
    with pytest.raises(RuntimeError, match="cannot re-run one step"):
        replay(engine, request, opened(engine, request, answer, (0,)), 4)


def test_openings_that_do_not_open_the_commitment_fail(tiny):
    engines_, references = tiny
    request = t2i(steps=6)
    answer = engines_[T2I].answer(request)
    good = opened(engines_[T2I], request, answer, (0, 3))

    def verdict(response=answer, openings=good):
        return check_images(references[T2I], request, response, openings)

    assert verdict().passed
    flipped = bytearray(good.latents[4][0])
    flipped[0] ^= 1
    assert "does not match its digest" in verdict(
        openings=replace(good, latents={**good.latents, 4: [bytes(flipped)]})).reason
    assert "latent 4 not opened" in verdict(
        openings=replace(good, latents={i: x for i, x in good.latents.items() if i != 4})).reason
    short = answer.model_copy(update={"trajectory": [answer.trajectory[0][:5]]})
    assert "the pipeline runs 6" in verdict(response=short).reason
    assert "the pipeline runs 6" in verdict(response=answer.model_copy(
        update={"trajectory": []})).reason
    # a committed NaN latent hashes to its digest, and still fails
    nan = np.full(len(good.latents[4][0]) // 4, np.nan, "<f4").tobytes()
    trajectory = [answer.trajectory[0][:3] + [latent_digest(nan)] + answer.trajectory[0][4:]]
    assert "not finite" in verdict(
        response=answer.model_copy(update={"trajectory": trajectory}),
        openings=replace(good, latents={**good.latents, 4: [nan]})).reason
    assert "opened steps" in verdict(openings=replace(good, steps=(2,))).reason


def committing(answer: ImageResponse, openings: Openings, png: bytes
               ) -> tuple[ImageResponse, Openings]:
    """The answer and openings of a miner that committed ``png`` (its sha256) and sends it."""
    proof = answer.proofs[0].model_copy(update={"sha256": png_digest(png)})
    return (answer.model_copy(update={"proofs": [proof]}), replace(openings, images=[png]))


@pytest.mark.parametrize("png,why", [(BOMB, "(20000, 20000) PNG"), (SMALL, "(16, 16) PNG"),
                                     (b"GIF89a" + b"\x00" * 40, "not a PNG"),
                                     (b"\x89PNG\r\n\x1a\n" + b"\x00" * 4, "not a PNG")])
def test_an_unreadable_or_wrong_sized_image_is_a_failed_check_never_an_error(tiny, png, why):
    """Committed and sent as committed: its size is read from the header before any pixel."""
    engines_, references = tiny
    request = t2i(steps=3)
    answer = engines_[T2I].answer(request)
    openings = opened(engines_[T2I], request, answer, (0,))
    verdict = check_images(references[T2I], request, *committing(answer, openings, png))
    assert not verdict.passed and "does not decode" in verdict.reason and why in verdict.reason
    # sent, but not the one committed
    verdict = check_images(references[T2I], request, answer, replace(openings, images=[SMALL]))
    assert not verdict.passed and "does not match its sha256" in verdict.reason


def test_a_png_lying_about_its_size_in_its_data_fails(tiny):
    """The header's size checked, then what PIL reads of it: truncated data is the miner's."""
    engines_, references = tiny
    request = t2i(steps=3)
    answer = engines_[T2I].answer(request)
    openings = opened(engines_[T2I], request, answer, (0,))
    truncated = openings.images[0][:60]
    verdict = check_images(references[T2I], request, *committing(answer, openings, truncated))
    assert not verdict.passed and "does not decode" in verdict.reason


def test_png_size_reads_the_header_only():
    assert png_size(BOMB) == (20000, 20000) and png_size(SMALL) == (16, 16)
    with pytest.raises(ValueError):
        png_size(b"\x89PNG\r\n")


class FakeClient:
    """A SignedClient whose one answer is ``reply``; it records what it was asked."""

    def __init__(self, reply: Reply):
        self.reply, self.asked = reply, []

    async def post(self, endpoint, path, receiver, message, timeout, max_bytes):
        self.asked.append((path, message, max_bytes))
        return self.reply


NEURON = Neuron(uid=1, hotkey="5miner", coldkey="5cold", stake=0.0, validator_permit=False,
                endpoint="http://127.0.0.1:9", registered_at=0)


@pytest.mark.parametrize("change,ok", [
    ({}, True), ({"width": 16}, False), ({"height": 128}, False),
    ({"thumbnail": base64.b64encode(BOMB).decode()}, False),  # header read, pixels never
    ({"thumbnail": base64.b64encode(SMALL).decode()}, False),
    ({"thumbnail": "%%%"}, False), ({"images": True}, False)])
def test_receipt_checks_each_proofs_size_and_thumbnail_header_against_the_request(tiny, change,
                                                                                   ok):
    """An answer by reference names the request's size and a THUMBNAIL_PX thumbnail, and no
    PNG: one sending its images inline is invalid too."""
    engines_, _ = tiny
    request = t2i(steps=2)
    answer = engines_[T2I].answer(request)
    if change.pop("images", False):
        answer = answer.model_copy(update={"images": [base64.b64encode(SMALL).decode()]})
    answer = answer.model_copy(update={"proofs": [answer.proofs[0].model_copy(update=change)]})
    client = FakeClient(Reply(200, answer.model_dump_json().encode()))
    run = dispatch.image(client, NEURON, request)  # type: ignore[arg-type]
    if ok:
        assert asyncio.run(run) == answer
        assert len(answer.model_dump_json()) < 5000  # a proof and 2 digests: no PNG
    else:
        with pytest.raises(dispatch.MinerFailed) as failed:
            asyncio.run(run)
        assert failed.value.outcome is Outcome.INVALID


class MinerApp:
    """A SignedClient in front of the miner app's TestClient, signing as validator ``key``."""

    def __init__(self, client, key, me):
        self.client, self.key, self.me = client, key, me

    async def post(self, endpoint, path, receiver, message, timeout, max_bytes):
        r = post(self.client, path, message, self.key, self.me)
        assert len(r.content) <= max_bytes
        return Reply(r.status_code, r.content)


def test_a_validator_opens_an_answer_through_the_miners_signed_endpoint(miner, subnet):  # noqa: F811
    client, me = miner
    request = t2i(steps=9)
    r = post(client, "/text-to-image", request, subnet.validator, me)
    assert r.status_code == 200, r.text
    answer = ImageResponse.model_validate_json(r.content)
    steps = pick_steps(answer, random.Random(1))
    app = MinerApp(client, subnet.validator, me)
    openings = asyncio.run(fetch_openings(app, NEURON, request, answer, steps))  # type: ignore
    reference = load_engine(T2I)
    assert check_images(reference, request, answer, openings).passed
    # an answer it never made (or no longer keeps) is not opened: the check will fail
    other = answer.model_copy(update={"trajectory": [["ab" * 32] * 9]})
    with pytest.raises(OpeningFailed, match="404"):
        asyncio.run(fetch_openings(app, NEURON, request, other, steps))  # type: ignore
    # unsigned is refused as every synapse is
    asked = TrajectoryRequest(task=T2I, key=commitment_key(answer.trajectory), latents=[1])
    assert client.post("/trajectory", content=asked.model_dump_json()).status_code == 401


def test_the_store_is_bounded_in_count_bytes_and_age():
    step, png = [torch.zeros(1, 4, 8, 8)], [b"p" * 512]  # 1 KiB of latent, a 512-byte PNG
    by_count = Trajectories(count=2, seconds=60, size=1 << 20)
    for key in "abc":
        by_count.keep(key, step, png)
    assert by_count.open("a", [1]) is None and by_count.open("c", [1]) is not None
    assert by_count.open("c", []) == ([], png)  # the PNGs alone
    by_size = Trajectories(count=10, seconds=60, size=3072)  # the PNGs count: two answers fit
    for key in "abc":
        by_size.keep(key, step, png)
    assert by_size.open("a", [1]) is None and by_size.open("b", [1]) is not None
    by_age = Trajectories(count=10, seconds=0.0, size=1 << 20)
    by_age.keep("a", step, png)
    assert by_age.open("a", [1]) is None


@pytest.mark.process
def test_a_miner_forwards_an_opening_to_the_worker_that_made_the_answer():
    from core.backends.remote import WorkerImages
    from core.miner.pool import Pool, ServerWorker
    from devtools.localproc import free_port
    from tests.test_worker_pool import TOKEN, start_worker, stop

    port = free_port()
    worker = start_worker(port, T2I)
    request = t2i(steps=5)
    try:
        async def run():
            pool = Pool(T2I, [ServerWorker("w", 10, 1, WorkerImages(
                f"http://127.0.0.1:{port}", TOKEN))])
            try:
                answer = await pool.images(request)
                asked = TrajectoryRequest(task=T2I, key=commitment_key(answer.trajectory),
                                          latents=[1, 5])
                unknown = asked.model_copy(update={"key": "cd" * 32})
                return answer, await pool.trajectory(asked), await pool.trajectory(unknown)
            finally:
                await pool.close()

        answer, opening, missing = asyncio.run(run())
    finally:
        stop(worker)
    assert opening is not None and missing is None  # latent 5 is the second asked
    assert [latent_digest(base64.b64decode(x)) for x in opening.latents[1]] == [
        answer.trajectory[0][4]]
    # the worker kept the PNG it answered by reference, and sends it with the latents
    assert [png_digest(base64.b64decode(x)) for x in opening.images] == [
        p.sha256 for p in answer.proofs]
