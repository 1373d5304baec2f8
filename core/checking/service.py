"""The validator's checking service: a bounded queue of sampled results, checked off the serving
path against reference models, each verdict written back as the record's quality
(docs/protocol.md §8).

Sampling is drawn after each answer arrives, from the system's randomness, so a miner cannot tell
which of its answers will be checked: each answer with probability ``rate``, and one answer per
contender and period at a uniformly random place among as many answers as it gave last period
(a sequential draw: the i-th, from 0, with probability 1/(n - i); n is FIRST_PERIOD_ANSWERS in
its first period), so every contender has a checked
figure whatever the rate and none is predictable (the first one of a period used to be).

Order: the queue serves the contender whose last check ended longest ago first (never checked:
first of all), and when full drops a job of the contender checked most recently: a backlog
delays the checks of the well-checked, never starves a contender, so none keeps quality 1 for
long (with C checks a period and M contenders each is checked at least every ceil(M/C)
periods). A check that ends after its period closed counts at the next close
(``Store.set_quality``), never lost. CPU references run in a worker thread; GPU references in
their own process, so a model crash cannot take the validator down.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from core.checking.trajectory import STEP_TOLERANCE, Openings
from core.errors import Unavailable
from core.metagraph import Neuron
from core.protocol import ChatChunk, ChatRequest, ChatToken, ImageRequest, ImageResponse
from core.scoring import speed_quality
from core.storage import AsyncStore
from core.tasks import TASKS

log = logging.getLogger("validator.checking")
UNWRITTEN = 4096  # check results kept while the store refuses them (a few a second)

# Answers assumed of a contender in its first period with this validator, for the period's draw:
# its first answer is not the checked one for sure (with 1, it was)
FIRST_PERIOD_ANSWERS = 8


@dataclass(frozen=True)
class Job:
    record_id: int
    period: int
    task: str
    request: ChatRequest | ImageRequest
    answer: tuple[Sequence[ChatToken], ChatChunk] | ImageResponse
    latency_s: float
    units: float
    neuron: Neuron | None = None  # the miner: named when it fails, asked for openings
    openings: Openings | None = None  # an image answer's opened trajectory steps (when fetched)

    @property
    def hotkey(self) -> str:
        return self.neuron.hotkey if self.neuron else ""

    @property
    def uid(self) -> int:
        return self.neuron.uid if self.neuron else -1

    @property
    def key(self) -> tuple[str, str]:
        return self.hotkey, self.task


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
        verdict = check_chat(engine, job.request, list(tokens), final)
    else:
        assert isinstance(job.answer, ImageResponse)
        # a GPU reference judges no re-run step (its float16 tolerance is unmeasured)
        verdict = check_images(engine, job.request, job.answer, job.openings,
                               tolerance=STEP_TOLERANCE if mode == "cpu" else None)
    if not verdict.passed:
        return 0.0, verdict.reason
    return speed_quality(job.task, job.latency_s, job.units), ""


@dataclass
class Stats:
    checked: int = 0
    failed: int = 0
    dropped: int = 0
    late: int = 0  # checks that ended after their period closed (counted at the next close)
    reasons: dict[str, int] = field(default_factory=dict)


class Checker:
    def __init__(self, store: AsyncStore, mode: str, *, rate: float = 0.1, max_queue: int = 256,
                 rng: random.Random | None = None,
                 opener: Callable[[Job], Coroutine[Any, Any, Job]] | None = None):
        """``opener``: what a job needs from the miner after receipt (an image answer's
        trajectory openings), fetched at once, before the job queues."""
        self.store, self.mode, self.rate = store, mode, rate
        self.queue: list[Job] = []
        self.max_queue = max_queue
        self.stats = Stats()
        self.rng = rng or random.SystemRandom()
        self.opener = opener
        self._answers: dict[tuple[int, str, str], int] = {}  # (period, hotkey, task) -> seen
        self._drawn: set[tuple[int, str, str]] = set()  # those whose period's draw is done
        self._last_period: dict[tuple[str, str], int] = {}  # answers of its previous period
        self._last_checked: dict[tuple[str, str], int] = {}  # order of its last ended check
        self._ended = 0
        self._closed = -1  # the last period whose close was awaited (``drain``)
        self._ready = asyncio.Event()
        self._busy: Job | None = None
        self._opening: set[asyncio.Task] = set()
        self._executor: Executor = (
            ThreadPoolExecutor(1, thread_name_prefix="checker") if mode == "cpu"
            else ProcessPoolExecutor(1, mp_context=get_context("spawn")))
        self._worker: asyncio.Task | None = None
        self._unwritten: deque[tuple[int, float, str | None]] = deque(maxlen=UNWRITTEN)

    def wants(self, period: int, hotkey: str, task: str) -> bool:
        """Whether to check this answer, drawn now that it has arrived (module docstring)."""
        key = (period, hotkey, task)
        seen = self._answers.get(key, 0)
        self._answers[key] = seen + 1
        if key not in self._drawn:
            expected = max(self._expected((hotkey, task)), seen + 1)
            if self.rng.random() * (expected - seen) < 1:
                self._drawn.add(key)
                return True
        if self.rng.random() < self.rate:
            self._drawn.add(key)  # any check of the period is its checked figure
            return True
        return False

    def _expected(self, key: tuple[str, str]) -> int:
        """Answers a contender is expected to give this period: as many as last period."""
        return self._last_period.get(key, FIRST_PERIOD_ANSWERS)

    def _background(self, work: Coroutine[Any, Any, object]) -> None:
        """Run ``work`` beside the queue, cancelled by ``close``."""
        task = asyncio.create_task(work)
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    def offer(self, job: Job) -> None:
        """An answer just received: queued when drawn (``wants``). An image answer not drawn is
        opened anyway as often as one is drawn (a decoy, its openings thrown away), so an
        opening request does not tell a miner that its period's draw has been made: cheating
        after the first opening of a period paid at rate 0 before."""
        if self.wants(job.period, *job.key):
            self.submit(job)
            return
        if self.opener is None or not isinstance(job.request, ImageRequest):
            return
        if self.rng.random() < self.rate + 1 / max(1, self._expected(job.key)):
            self._background(self.opener(job))

    def submit(self, job: Job) -> None:
        """Queue ``job``; an answer that needs openings from the miner fetches them first."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run())
        if self.opener is None or not isinstance(job.request, ImageRequest):
            self._enqueue(job)
            return
        self._background(self._open_then_enqueue(job))

    async def _open_then_enqueue(self, job: Job) -> None:
        assert self.opener is not None
        self._enqueue(await self.opener(job))

    def _priority(self, job: Job) -> int:
        return self._last_checked.get(job.key, -1)

    def _enqueue(self, job: Job) -> None:
        if len(self.queue) >= self.max_queue:
            # the most recently checked contender's oldest job goes
            drop = max(range(len(self.queue)), key=lambda i: (self._priority(self.queue[i]), -i))
            del self.queue[drop]
            self.stats.dropped += 1
        self.queue.append(job)
        self._ready.set()

    def _next(self) -> Job:
        """The job of the contender whose last check ended longest ago; the oldest of its."""
        best = min(range(len(self.queue)), key=lambda i: (self._priority(self.queue[i]), i))
        return self.queue.pop(best)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            job = self._busy = self._next()
            try:
                quality, reason = await loop.run_in_executor(self._executor, quality_of, job,
                                                             self.mode)
            except Exception as e:  # a reference that cannot run is not the miner's fault
                log.error("check of record %d failed to run: %s", job.record_id, e)
                self._busy = None
                continue
            head = reason.split(" (")[0][:60] if reason else None  # the kind, not the figures
            await self._write(job.record_id, quality, head)
            self._ended += 1
            self._last_checked[job.key] = self._ended
            self.stats.checked += 1
            if job.period <= self._closed:
                self.stats.late += 1
            if head is not None:
                self.stats.failed += 1
                self.stats.reasons[head] = self.stats.reasons.get(head, 0) + 1
                log.warning("uid %d (%s) failed its %s check (record %d): %s", job.uid,
                            job.hotkey, job.task, job.record_id, reason)
            self._busy = None

    async def _write(self, record_id: int, quality: float, head: str | None) -> None:
        """Store a check's result, after those the store refused before: while it is away the
        checker goes on checking, and its results wait here (the last ``UNWRITTEN``)."""
        self._unwritten.append((record_id, quality, head))
        while self._unwritten:
            try:
                await self.store.set_quality(*self._unwritten[0])
            except Unavailable as e:
                log.warning("%d check results wait for the store: %s", len(self._unwritten), e)
                return
            self._unwritten.popleft()

    async def drain(self, period: int, timeout: float) -> None:
        """Wait (at most ``timeout``) until no job of ``period`` is queued or being checked;
        what is left is checked later and counts at the next close."""
        deadline = asyncio.get_running_loop().time() + timeout
        while any(j.period == period for j in self.queue) or (
                self._busy is not None and self._busy.period == period):
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("period %d closes with %d results still unchecked: they count at "
                            "the next close", period, sum(j.period == period for j in self.queue))
                break
            await asyncio.sleep(0.05)
        self._closed = max(self._closed, period)
        self._last_period.update({(hotkey, task): n for (p, hotkey, task), n
                                  in self._answers.items() if p == period})
        self._answers = {k: n for k, n in self._answers.items() if k[0] > period}
        self._drawn = {k for k in self._drawn if k[0] > period}

    async def close(self) -> None:
        for task in [self._worker, *self._opening]:
            if task is not None:
                task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
