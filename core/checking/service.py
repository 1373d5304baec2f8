"""The validator's checking service: a bounded queue of sampled results, checked off the serving
path against reference models, each verdict written back as the record's quality.

Sampling: the first result of every contender in every period (so each has a checked figure),
then each other result with probability ``rate``. When the queue is full the oldest unchecked
job is dropped and counted: checks never hold up requests. CPU references run in a worker
thread; GPU references in their own process, so a model crash cannot take the validator down.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

from core.protocol import ChatChunk, ChatRequest, ChatToken, ImageRequest, ImageResponse
from core.scoring import speed_quality
from core.tasks import TASKS

log = logging.getLogger("validator.checking")


@dataclass(frozen=True)
class Job:
    record_id: int
    period: int
    task: str
    request: ChatRequest | ImageRequest
    answer: tuple[list[ChatToken], ChatChunk] | ImageResponse
    latency_s: float
    units: float


class References:
    """Reference engines per task, loaded on first use: ``cpu`` builds the tiny models the CPU
    back end serves (development, local subnet); ``gpu`` loads the tasks' production models, each
    checkpoint once (text-to-image and image-to-image tasks of one model share its weights)."""

    def __init__(self, mode: str):
        self.mode = mode
        self._engines: dict = {}

    def engine(self, task: str):
        if task not in self._engines:
            from core.backends import load_engine
            from core.backends.diffusers_images import DiffusersImages
            from core.backends.transformers_chat import TransformersChat
            from core.tasks import Kind

            t = TASKS[task]
            if self.mode == "cpu":
                self._engines[task] = load_engine(task)
            elif t.kind is Kind.CHAT:
                self._engines[task] = TransformersChat.from_pretrained(t.model, device="cuda")
            else:
                loaded = next((e for other, e in self._engines.items()
                               if TASKS[other].model == t.model
                               and isinstance(e, DiffusersImages)), None)
                self._engines[task] = (DiffusersImages(loaded.pipeline, t.kind) if loaded
                                       else DiffusersImages.from_pretrained(t.model, t.kind))
        return self._engines[task]


_references: References | None = None  # one per worker thread pool or process


def references(mode: str) -> References:
    """This worker's references (loaded on first use of each task)."""
    global _references
    if _references is None or _references.mode != mode:
        _references = References(mode)
    return _references


def preload(mode: str, tasks) -> None:
    """Load the references of ``tasks`` now rather than at their first check."""
    for task in tasks:
        references(mode).engine(task)


def quality_of(job: Job, mode: str) -> tuple[float, str]:
    """The job's quality (0 when the check fails, else the speed factor) and why."""
    from core.checking.chat import check_chat
    from core.checking.images import check_images

    engine = references(mode).engine(job.task)
    if isinstance(job.request, ChatRequest):
        assert isinstance(job.answer, tuple)
        tokens, final = job.answer
        verdict = check_chat(engine, job.request, tokens, final)
    else:
        assert isinstance(job.answer, ImageResponse)
        verdict = check_images(engine, job.request, job.answer)
    if not verdict.passed:
        return 0.0, verdict.reason
    return speed_quality(job.task, job.latency_s, job.units), ""


@dataclass
class Stats:
    checked: int = 0
    failed: int = 0
    dropped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class Checker:
    def __init__(self, store, mode: str, *, rate: float = 0.1, max_queue: int = 256,
                 rng: random.Random | None = None):
        self.store, self.mode, self.rate = store, mode, rate
        self.queue: deque[Job] = deque()
        self.max_queue = max_queue
        self.stats = Stats()
        self.rng = rng or random.Random()
        self._seen: set[tuple[int, str, str]] = set()
        self._ready = asyncio.Event()
        self._busy: Job | None = None
        self._executor: Executor = (
            ThreadPoolExecutor(1, thread_name_prefix="checker") if mode == "cpu"
            else ProcessPoolExecutor(1, mp_context=get_context("spawn")))
        self._worker: asyncio.Task | None = None

    def wants(self, period: int, hotkey: str, task: str) -> bool:
        """Sample: the contender's first result this period, then ``rate`` of the rest."""
        key = (period, hotkey, task)
        if key not in self._seen:
            self._seen.add(key)
            return True
        return self.rng.random() < self.rate

    def submit(self, job: Job) -> None:
        if len(self.queue) >= self.max_queue:
            self.queue.popleft()
            self.stats.dropped += 1
        self.queue.append(job)
        self._ready.set()
        if self._worker is None:
            self._worker = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            job = self._busy = self.queue.popleft()
            try:
                quality, reason = await loop.run_in_executor(self._executor, quality_of, job,
                                                             self.mode)
            except Exception as e:  # a reference that cannot run is not the miner's fault
                log.error("check of record %d failed to run: %s", job.record_id, e)
                self._busy = None
                continue
            head = reason.split(" (")[0][:60] if reason else None  # the kind, not the figures
            self.store.set_quality(job.record_id, quality, head)
            self.stats.checked += 1
            if head is not None:
                self.stats.failed += 1
                self.stats.reasons[head] = self.stats.reasons.get(head, 0) + 1
                log.info("record %d (%s) failed its check: %s", job.record_id, job.task, reason)
            self._busy = None

    async def drain(self, period: int, timeout: float) -> None:
        """Wait (at most ``timeout``) until no job of ``period`` is queued or being checked."""
        deadline = asyncio.get_running_loop().time() + timeout
        while any(j.period == period for j in self.queue) or (
                self._busy is not None and self._busy.period == period):
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("period %d closes with %d results still unchecked", period,
                            sum(j.period == period for j in self.queue))
                return
            await asyncio.sleep(0.05)
        self._seen = {k for k in self._seen if k[0] > period}

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
