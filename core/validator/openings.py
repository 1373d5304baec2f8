"""Asking a miner to open steps of an image answer's trajectory (docs/protocol.md §8), right after
receipt and for the steps the checker drew then (``core.checking.trajectory.pick_steps``): what
the miner sends is read up to what an honest opening of those steps takes, and nothing in it is
trusted before the checker hashes it against the commitment."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from core.chain import Neuron
from core.checking.service import Job
from core.checking.trajectory import Openings, latents_needed, openings_of, pick_steps
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
    """The miner's latents that open ``steps`` of ``response`` (``latents_needed``), as bytes;
    raises OpeningFailed whatever goes wrong."""
    if not response.trajectory or not response.trajectory[0]:
        raise OpeningFailed("the answer commits no trajectory")
    asked = latents_needed(steps, len(response.trajectory[0]))
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
