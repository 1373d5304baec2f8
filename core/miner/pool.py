"""A task's workers behind the miner's front end: in-process engines and servers on other hosts.

Each request goes to the healthy worker with the most free concurrency. A worker that cannot be
reached is taken out at once (and the request tried on another, if nothing was sent yet); health
checks put it back when it answers again, with the front end's token (a wrong token is down, not
a worker answering 401s). The miner declares what its healthy workers bring, so a lost GPU lowers
the next period's declaration (the current one is signed: docs/protocol.md §2).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, cast

import aiohttp

from core.backends import ChatEngine, Engine, load_engine
from core.backends.remote import OpenAIChat, WorkerError, WorkerImages
from core.errors import Unavailable
from core.miner.config import ConfigError, MinerConfig, WorkerEntry
from core.openai_wire import StreamError
from core.protocol import (
    ChatChunk,
    ChatRequest,
    ImageRequest,
    ImageResponse,
    TrajectoryRequest,
    TrajectoryResponse,
)
from core.tasks import TASKS, Kind

if TYPE_CHECKING:  # torch is imported only where an engine runs in this process
    from core.backends.diffusers_images import DiffusersImages

log = logging.getLogger("miner.pool")
# failures that say the worker is not there (as opposed to an answer about the request)
UNREACHABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, StreamError, OSError,
               TimeoutError)


class NoWorker(Unavailable):
    """No healthy worker could take the request."""


class Worker:
    """One member of a pool: what it brings, how busy it is, whether it answers."""

    def __init__(self, name: str, capacity: float, concurrency: int):
        self.name, self.capacity, self.concurrency = name, capacity, concurrency
        self.in_flight = 0
        self.healthy = True

    @property
    def free(self) -> int:
        return self.concurrency - self.in_flight

    async def alive(self) -> bool:
        return True

    def chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        raise NotImplementedError

    async def images(self, request: ImageRequest) -> ImageResponse:
        """The answer by reference (a proof of each image and the trajectory commitment), its
        PNGs and latents kept to be opened."""
        raise NotImplementedError

    async def trajectory(self, request: TrajectoryRequest) -> TrajectoryResponse | None:
        """The asked latents and the PNGs of an answer this worker made and still keeps, else
        None."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class LocalWorker(Worker):
    """An engine in this process (a tiny CPU model, or a GPU back end on a named device)."""

    def __init__(self, name: str, capacity: float, concurrency: int, engine: Engine):
        super().__init__(name, capacity, concurrency)
        self.engine = engine

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        engine = cast(ChatEngine, self.engine)  # a chat task's engine
        prompt, produced = len(engine.prompt_ids(request)), 0
        async for batch in engine.stream(request):
            produced += len(batch)
            yield ChatChunk.of(batch)
        yield ChatChunk(done=True, prompt_tokens=prompt, completion_tokens=produced)

    async def images(self, request: ImageRequest) -> ImageResponse:
        engine = cast("DiffusersImages", self.engine)  # an image task's engine
        return await asyncio.to_thread(engine.answer, request)

    async def trajectory(self, request: TrajectoryRequest) -> TrajectoryResponse | None:
        engine = cast("DiffusersImages", self.engine)
        return await engine.opening(request)

    async def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:  # vLLM: its engine processes hold the GPU's memory
            close()


class ServerWorker(Worker):
    """A server on another host: ``vllm serve`` or ``neurons/worker.py``."""

    def __init__(self, name: str, capacity: float, concurrency: int,
                 client: OpenAIChat | WorkerImages):
        super().__init__(name, capacity, concurrency)
        self.client = client

    async def alive(self) -> bool:
        return await self.client.alive()

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        assert isinstance(self.client, OpenAIChat)  # a chat task's server
        async for chunk in self.client.chunks(request):
            yield chunk

    async def images(self, request: ImageRequest) -> ImageResponse:
        assert isinstance(self.client, WorkerImages)  # an image task's worker
        return await self.client.answer(request)

    async def trajectory(self, request: TrajectoryRequest) -> TrajectoryResponse | None:
        assert isinstance(self.client, WorkerImages)
        return await self.client.open(request)

    async def close(self) -> None:
        await self.client.close()


class Pool:
    def __init__(self, task: str, workers: list[Worker]):
        self.task, self.workers = task, workers
        self.on_change: Callable[[Pool], None] = lambda pool: None

    def declared(self) -> float:
        """What the healthy workers bring in a period."""
        return sum(w.capacity for w in self.workers if w.healthy)

    def concurrency(self) -> int:
        return sum(w.concurrency for w in self.workers if w.healthy)

    def pick(self, tried: set[str]) -> Worker | None:
        """The healthy worker not yet tried with the most free concurrency (first listed on
        ties)."""
        options = [w for w in self.workers if w.healthy and w.name not in tried]
        return max(options, key=lambda w: w.free, default=None)

    def mark(self, worker: Worker, healthy: bool, why: str = "") -> None:
        if worker.healthy == healthy:
            return
        worker.healthy = healthy
        log.warning("%s worker %s is %s%s; declaring %g", self.task, worker.name,
                    "back" if healthy else "down", f" ({why})" if why else "", self.declared())
        self.on_change(self)

    async def check(self) -> None:
        """Probe every worker at once; mark each by its answer."""
        answers = await asyncio.gather(*(w.alive() for w in self.workers))
        for worker, alive in zip(self.workers, answers):
            self.mark(worker, alive, "" if alive else "health check failed")

    def _failed(self, worker: Worker, error: Exception) -> bool:
        """Take out a worker that cannot be reached (one that answered stays: the health check
        decides); whether another worker may succeed, i.e. it did not refuse the request itself."""
        if isinstance(error, UNREACHABLE):
            self.mark(worker, False, type(error).__name__)
            return True
        return not 400 <= getattr(error, "status", 500) < 500

    def _next(self, tried: set[str]) -> Worker:
        worker = self.pick(tried)
        if worker is None:
            raise NoWorker(f"no healthy {self.task} worker" + (" left" if tried else ""))
        tried.add(worker.name)
        return worker

    async def chat(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        """The stream of one worker; one that fails before its first chunk is replaced."""
        tried: set[str] = set()
        while True:
            worker = self._next(tried)
            worker.in_flight += 1
            started = False
            try:
                async for chunk in worker.chat(request):
                    started = True
                    yield chunk
                return
            except (*UNREACHABLE, WorkerError) as e:
                if not self._failed(worker, e) or started:
                    raise
            finally:
                worker.in_flight -= 1

    async def images(self, request: ImageRequest) -> ImageResponse:
        tried: set[str] = set()
        while True:
            worker = self._next(tried)
            worker.in_flight += 1
            try:
                return await worker.images(request)
            except (*UNREACHABLE, WorkerError) as e:
                if not self._failed(worker, e):
                    raise
            finally:
                worker.in_flight -= 1

    async def trajectory(self, request: TrajectoryRequest) -> TrajectoryResponse | None:
        """The opening from whichever healthy worker keeps the answer (asked all at once: the
        front end does not track which worker made which answer), else None."""
        async def ask(worker: Worker) -> TrajectoryResponse | None:
            try:
                return await worker.trajectory(request)
            except (*UNREACHABLE, WorkerError) as e:
                self._failed(worker, e)
                return None

        found = await asyncio.gather(*(ask(w) for w in self.workers if w.healthy))
        return next((f for f in found if f is not None), None)

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self.workers))


def _server(task_id: str, entry: WorkerEntry, where: str) -> ServerWorker:
    token = None
    if entry.token_env is not None:
        token = os.environ.get(entry.token_env)
        if not token:
            raise ConfigError(f"{where}.token_env: environment variable {entry.token_env} is "
                              f"not set (it must hold the worker's token)")
    task = TASKS[task_id]
    assert entry.url is not None  # a worker entry with a url, as the caller checked
    client: OpenAIChat | WorkerImages
    if task.kind is Kind.CHAT:
        client = OpenAIChat(entry.url, entry.model or task.model, token)
    else:
        client = WorkerImages(entry.url, token)
    return ServerWorker(entry.name, entry.capacity, entry.concurrency, client)


def build_pools(config: MinerConfig, engines: dict[str, Engine] | None = None) -> dict[str, Pool]:
    """A pool per declared task. A task without ``workers`` is one in-process worker with the
    task's capacity, its engine from ``engines`` when given, else loaded (its concurrency group
    limits it, in ``Slots``)."""
    engines = engines or {}
    pools = {}
    for task_id, entry in config.tasks.items():
        if entry.workers is None:
            if task_id not in engines:
                log.info("loading %s on the %s back end", task_id, entry.backend)
            engine = engines.get(task_id) or load_engine(task_id, entry.engine())
            workers: list[Worker] = [LocalWorker("local", entry.total(), 1, engine)]
        else:
            workers = []
            for i, w in enumerate(entry.workers):
                if w.url is not None:
                    workers.append(_server(task_id, w, f"tasks.{task_id}.workers.{i}"))
                else:
                    log.info("loading %s on the %s back end, %s", task_id, entry.backend, w.device)
                    engine = load_engine(task_id, entry.engine(device=w.device))
                    workers.append(LocalWorker(w.name, w.capacity, w.concurrency, engine))
        pools[task_id] = Pool(task_id, workers)
    return pools
