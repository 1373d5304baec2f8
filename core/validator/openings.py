"""Asking a miner to open an image answer it gave by reference (docs/protocol.md §8), right after
receipt: its full PNGs with the latents of the steps the checker drew then
(``core.checking.trajectory.pick_steps``), or the PNGs alone for organic traffic. What the miner
sends is read up to what an honest opening takes, and nothing in it is trusted before it is
hashed against the commitment."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from core.chain import Neuron
from core.checking.images import verified_pngs
from core.checking.service import Job
from core.checking.trajectory import (
    OpeningProblem,
    Openings,
    latents_needed,
    openings_of,
    pick_steps,
)
from core.errors import PeerFault
from core.protocol import (
    TRAJECTORY_PATH,
    ImageRequest,
    ImageResponse,
    TrajectoryRequest,
    TrajectoryResponse,
    commitment_key,
)
from core.transport.client import SignedClient

log = logging.getLogger("validator.checking")

OPENING_TIMEOUT_S = 10.0  # latents kept in memory: an honest miner answers at once


class OpeningFailed(PeerFault):
    """The miner did not open the answer (refused, silent, oversized, malformed): the check that
    needs it fails, the miner's doing. The message says how."""


async def fetch_openings(client: SignedClient, neuron: Neuron, request: ImageRequest,
                         response: ImageResponse, steps: tuple[int, ...]) -> Openings:
    """The miner's latents that open ``steps`` of ``response`` (``latents_needed``; none for no
    steps) and its full PNGs, as bytes; raises OpeningFailed whatever goes wrong."""
    if not response.trajectory or not response.trajectory[0]:
        raise OpeningFailed("the answer commits no trajectory")
    asked = latents_needed(steps, len(response.trajectory[0])) if steps else []
    message = TrajectoryRequest(task=request.task, key=commitment_key(response.trajectory),
                                latents=asked)
    try:
        reply = await client.post(neuron.endpoint, TRAJECTORY_PATH, neuron.hotkey, message,
                                  OPENING_TIMEOUT_S,
                                  TrajectoryResponse.max_bytes(request, len(asked)))
        if reply.status != 200:
            raise OpeningFailed(f"the opening answered {reply.status}")
        return openings_of(steps, asked, TrajectoryResponse.model_validate_json(reply.body))
    except OpeningFailed:
        raise
    except Exception as e:  # a miner's answer can fail in any way
        raise OpeningFailed(f"{type(e).__name__}: {e}"[:200]) from None


async def with_images(client: SignedClient, neuron: Neuron, request: ImageRequest,
                      response: ImageResponse) -> ImageResponse:
    """An organic answer by reference with its full PNGs, fetched at once (the API's client
    gets them) and verified against its proofs (``verified_pngs``, off the event loop: a 1024-px
    PNG takes milliseconds to decode); raises OpeningFailed, logged at WARNING naming the miner,
    when the miner does not send them or they are not the committed ones."""
    try:
        pngs = (await fetch_openings(client, neuron, request, response, ())).images
        await asyncio.to_thread(verified_pngs, request, response, pngs)
    except (OpeningFailed, OpeningProblem) as e:
        log.warning("uid %d (%s) did not send the images of its organic %s answer: %s",
                    neuron.uid, neuron.hotkey, request.task, e)
        raise OpeningFailed(str(e)) from None
    return response.model_copy(update={"images": [base64.b64encode(p).decode() for p in pngs]})


def opener(client: SignedClient, rng: random.Random) -> Callable[[Job], Coroutine[Any, Any, Job]]:
    """The checker's opener (``core.checking.service.Checker``): the steps drawn now, after
    receipt, and the miner's openings of them; None when it did not open them (the check fails,
    its doing)."""
    async def open_job(job: Job) -> Job:
        assert isinstance(job.request, ImageRequest) and isinstance(job.answer, ImageResponse)
        if job.neuron is None:
            return job
        steps = pick_steps(job.answer, rng)
        try:
            openings = await fetch_openings(client, job.neuron, job.request, job.answer, steps)
        except OpeningFailed as e:
            log.warning("uid %d (%s) did not open its %s answer (record %d): %s", job.uid,
                        job.hotkey, job.task, job.record_id, e)
            return job
        return replace(job, openings=openings)

    return open_job
