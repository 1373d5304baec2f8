"""Clients for workers that run on other hosts: chat through the OpenAI-compatible API that
``vllm serve`` exposes (and ``neurons/worker.py`` too), images through the worker's own
endpoints. One aiohttp session per client; a bearer token when the worker wants one.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiohttp

from core.errors import PeerFault
from core.openai_wire import CompletionBody, StreamError, read_chunk
from core.protocol import (
    PATHS,
    TRAJECTORY_PATH,
    ChatChunk,
    ChatRequest,
    ImageRequest,
    ImageResponse,
    TrajectoryRequest,
    TrajectoryResponse,
    commitment_key,
)
from core.tasks import TASKS

HEALTH_TIMEOUT_S = 2.0


class WorkerError(PeerFault):
    """The worker answered, but not with a result: ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"worker answered {status}: {message}")
        self.status = status


class RemoteWorker:
    def __init__(self, url: str, token: str | None = None, max_connections: int = 256):
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # created inside the event loop that uses it
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=4.0))
        return self._session

    async def alive(self) -> bool:
        """``GET /v1/models`` answers 200 with our token (vllm serve and the project's worker
        both have it): up, and reachable with what the front end sends."""
        try:
            async with self._http().get(f"{self.url}/v1/models",
                                        timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def _post(self, path: str, payload: dict, timeout: float | None):
        return self._http().post(f"{self.url}{path}", json=payload,
                                 timeout=aiohttp.ClientTimeout(total=timeout))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class OpenAIChat(RemoteWorker):
    """Chat on an OpenAI-compatible server: streamed, with each token's id and log-probability
    and the usage at the end, drawn by the protocol's sampler (``core.sampler``).

    The body carries the protocol's arguments (``CompletionBody.of``): ``min_tokens`` and, in
    ``vllm_xargs``, the seed, temperature and top-p the sampler draws with. The project's worker
    draws with them; ``vllm serve`` does when started with ``--logits-processors
    core.backends.vllm_sampler:ProtocolSampler`` (and ignores them otherwise). A remote that
    cannot draw with the protocol sampler (``vllm serve`` without it, a pay-per-token API) must
    not serve synthetic traffic: its answers at temperature > 0 fail the validator's replay
    check."""

    def __init__(self, url: str, model: str, token: str | None = None, **kw):
        super().__init__(url, token, **kw)
        self.model = model

    def body(self, request: ChatRequest) -> dict:
        return CompletionBody.of(request, self.model).model_dump(exclude_none=True)

    async def chunks(self, request: ChatRequest, timeout: float | None = None
                     ) -> AsyncIterator[ChatChunk]:
        """Token batches as they arrive, then the final chunk with the usage."""
        async with self._post("/v1/chat/completions", self.body(request), timeout) as r:
            if r.status != 200:
                raise WorkerError(r.status, (await r.text())[:300])
            final = None
            async for line in r.content:
                chunk = read_chunk(line)
                if chunk is True:
                    break
                if not isinstance(chunk, ChatChunk):
                    continue
                if chunk.done:
                    final = chunk
                else:
                    yield chunk
            if final is None:
                raise StreamError("the stream ended without its usage")
            yield final


class WorkerImages(RemoteWorker):
    """Images on a project worker (``neurons/worker.py``): the miner's request models, as JSON.
    The worker answers by reference and keeps the PNGs and latents it opens (TRAJECTORY_PATH),
    as a miner does (docs/protocol.md §8)."""

    async def answer(self, request: ImageRequest, timeout: float | None = None) -> ImageResponse:
        async with self._post(PATHS[TASKS[request.task].kind], request.model_dump(mode="json"),
                              timeout) as r:
            if r.status == 422:
                raise ValueError((await r.text())[:300])
            if r.status != 200:
                raise WorkerError(r.status, (await r.text())[:300])
            return ImageResponse.model_validate_json(await r.read())

    async def open(self, request: TrajectoryRequest, timeout: float | None = None
                   ) -> TrajectoryResponse | None:
        """The opening of an answer this worker keeps, else None."""
        async with self._post(TRAJECTORY_PATH, request.model_dump(mode="json"), timeout) as r:
            if r.status == 404:
                return None
            if r.status != 200:
                raise WorkerError(r.status, (await r.text())[:300])
            return TrajectoryResponse.model_validate_json(await r.read())

    async def generate(self, request: ImageRequest, timeout: float | None = None) -> list[bytes]:
        """The PNGs of a fresh answer: asked, then opened."""
        answer = await self.answer(request, timeout)
        opened = await self.open(TrajectoryRequest(
            task=request.task, key=commitment_key(answer.trajectory), latents=[]), timeout)
        if opened is None:
            raise WorkerError(404, "the worker keeps no such answer")
        return [base64.b64decode(i) for i in opened.images]
