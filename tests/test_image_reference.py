"""Image answers by reference (docs/protocol.md §8), through the miner's signed endpoints on the
CPU back end: every image request is answered with a bound proof (the PNG's sha256, its size, a
thumbnail) and the trajectory commitment; the full PNGs come when the answer is opened. The
hostile miners of tests/hostile_miner.py wrap the same app: each lie is the miner's failure, a
failed check for a synthetic answer and a failed request for an organic one."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re

import pytest
from fastapi.testclient import TestClient

from core.checking.images import THUMBNAIL_MATCH, check_images, png_size, thumbnail
from core.checking.trajectory import pick_steps
from core.protocol import ImageResponse, TextToImageRequest, png_digest
from core.records import Outcome
from core.storage import open_store
from core.validator import dispatch
from core.validator.counting import PromptCounter
from core.validator.openings import OpeningFailed, fetch_openings, with_images
from core.validator.traffic import Attempt, Traffic
from tests import hostile_miner
from tests.test_miner_app import CONFIG, engines, miner, post  # noqa: F401  (fixtures)
from tests.test_trajectory import NEURON, T2I, MinerApp

REQUEST = TextToImageRequest(task=T2I, prompt="a lighthouse", steps=6, height=64, width=64,
                             seed=4)


@pytest.fixture(scope="module")
def reference(tiny_image_references):
    return tiny_image_references[T2I]


@pytest.fixture
def miner_as(miner, subnet, monkeypatch):  # noqa: F811
    """A signed client of the miner app with tests/hostile_miner.py's ``mode`` around it."""
    client, me = miner

    def as_(mode: str) -> MinerApp:
        monkeypatch.setattr(hostile_miner, "MODE", mode)
        hostile = TestClient(hostile_miner.Hostile(client.app), client=("127.0.0.1", 50000))
        return MinerApp(hostile, subnet.validator, me)

    return as_


def answered(app: MinerApp) -> ImageResponse:
    return asyncio.run(dispatch.image(app, NEURON, REQUEST))  # type: ignore[arg-type]


def test_an_honest_answer_is_a_small_proof_and_opens_to_its_pngs(miner_as, reference):
    app = miner_as("")
    answer = answered(app)
    assert not answer.images and len(answer.model_dump_json()) < 5000
    # organic traffic: the full PNGs at once, the committed ones, of the requested size
    full = asyncio.run(with_images(app, NEURON, REQUEST, answer))  # type: ignore[arg-type]
    pngs = [base64.b64decode(i) for i in full.images]
    assert [png_digest(p) for p in pngs] == [p.sha256 for p in answer.proofs]
    assert [png_size(p) for p in pngs] == [(64, 64)]
    small = base64.b64decode(answer.proofs[0].thumbnail)
    assert abs(thumbnail(small) - thumbnail(pngs[0])).mean() < THUMBNAIL_MATCH / 4
    # a checked synthetic answer: the PNGs with the drawn steps' latents, and it passes
    steps = pick_steps(answer, random.Random(2))
    openings = asyncio.run(fetch_openings(app, NEURON, REQUEST, answer, steps))  # type: ignore
    assert openings.images == pngs
    verdict = check_images(reference, REQUEST, answer, openings)
    assert verdict.passed, verdict.reason


@pytest.mark.parametrize("mode,why", [
    ("swap-png", "does not match its sha256"),
    ("withhold-png", "0 PNGs sent for 1 committed"),
    ("wrong-thumbnail", "thumbnail is"),
    ("png-bomb", "a (20000, 20000) PNG for a (64, 64) request"),
])
def test_a_miner_that_does_not_send_the_committed_png_fails_checked_and_organic(
        miner_as, reference, caplog, mode, why):
    """Each passes receipt (its proof is well formed); opened, its PNGs are not what it proved:
    the check fails, and the organic request fails with a WARNING naming the miner."""
    app = miner_as(mode)
    answer = answered(app)
    steps = pick_steps(answer, random.Random(3))
    openings = asyncio.run(fetch_openings(app, NEURON, REQUEST, answer, steps))  # type: ignore
    verdict = check_images(reference, REQUEST, answer, openings)
    assert not verdict.passed and why in verdict.reason, verdict.reason
    with caplog.at_level(logging.WARNING, "validator.checking"), pytest.raises(
            OpeningFailed, match=re.escape(why)):
        asyncio.run(with_images(app, NEURON, REQUEST, answer))  # type: ignore[arg-type]
    assert any(r.levelno == logging.WARNING and f"uid {NEURON.uid} ({NEURON.hotkey})"
               in r.getMessage() and "organic" in r.getMessage() for r in caplog.records)


def test_a_proof_of_another_size_is_invalid_on_receipt(miner_as):
    with pytest.raises(dispatch.MinerFailed) as failed:
        answered(miner_as("wrong-size"))
    assert failed.value.outcome is Outcome.INVALID


@pytest.mark.parametrize("mode,outcome", [("", Outcome.OK), ("swap-png", Outcome.INVALID),
                                          ("withhold-png", Outcome.INVALID)])
def test_an_organic_request_gets_the_full_image_or_fails(miner_as, tmp_path, mode, outcome):
    """Through the validator's Traffic, as its API sends: the record says how it ended, and
    only an answer whose PNGs are the committed ones reaches the client."""
    store = open_store(str(tmp_path / "v.sqlite3"))
    traffic = Traffic(miner_as(mode), PromptCounter("tiny"), store, None)  # type: ignore[arg-type]
    result = asyncio.run(traffic.send(Attempt(NEURON, REQUEST, 0, REQUEST.units, 1,
                                              organic=True)))
    assert result.record is not None and result.record.outcome is outcome
    if outcome is Outcome.OK:
        assert isinstance(result.answer, ImageResponse)
        assert [png_digest(base64.b64decode(i)) for i in result.answer.images] == [
            p.sha256 for p in result.answer.proofs]
    else:
        assert result.answer is None
    store.close()
