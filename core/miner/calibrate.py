"""What to declare, measured on this setup (``neurons/miner.py --calibrate``).

For each task, its pool (the engines and workers the capacity YAML configures, loaded as the
miner loads them) serves requests of the task's synthetic shape from 1, 2, 4, ... streams at
once, up to the concurrency the task runs at (its group's, its workers', else 1). Each step runs
for ``seconds``; a step passes when its 95th-percentile latency is within the task's expected
time for the request (docs/protocol.md §8: the speed factor stays 1). The proposed capacity is
the best passing step's throughput over a period, times ``margin``: an audit window asks the
full declared rate of every task at once, so the declaration must be what the setup serves
with room to spare. Tasks sharing a concurrency group share its GPU: each gets its own figure
divided by the number of tasks in the group.

A period is ``--period-blocks`` x ``--block-time`` seconds (the protocol's 300 blocks of 12 s
by default): a chain with other blocks needs both given, or the proposal is off by their ratio.
Image requests are of the size the setup's validators send (``image_sizes``): 1024 px
(validators' default) for the GPU back ends and workers by URL, 64 px (what the local subnet's
validators send) for the cpu back end's tiny models, where a 1024 px image takes many minutes.
While a step runs, a progress line every ``tick_s`` shows what it has served so far (and the
denoising step images in flight are at); ``stop`` set ends the run where it is, with the steps
measured so far (the cut one from the requests answered before the stop) marked partial.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.miner.config import MinerConfig
from core.miner.pool import LocalWorker, Pool
from core.protocol import ChatRequest, TaskRequest
from core.synthetic import synthetic_request
from core.tasks import TASKS, Kind

GPU_IMAGE_SIZE = 1024  # what validators send by default (their --image-size)
CPU_IMAGE_SIZE = 64  # what the local subnet's validators send to the cpu back end's tiny models


@dataclass(frozen=True)
class Step:
    concurrency: int
    requests: int
    units_per_s: float
    p95_s: float
    expected_s: float

    @property
    def passed(self) -> bool:
        return self.requests > 0 and self.p95_s <= self.expected_s


@dataclass(frozen=True)
class TaskCalibration:
    task: str
    steps: list[Step]
    shared_by: int  # tasks in its concurrency group (1 outside a group)
    proposed: float  # units per period
    image_size: int | None = None  # pixels a side of its image requests (None: a chat task)
    partial: bool = False  # stopped before its ladder was done: the last step is cut short

    @property
    def best(self) -> Step | None:
        return best_step(self.steps)


def best_step(steps: list[Step]) -> Step | None:
    """The passing step that served the most."""
    return max((s for s in steps if s.passed), key=lambda s: s.units_per_s, default=None)


class EngineCounts:
    """A chat pool's prompt tokens as its in-process engine counts them, for sizing requests as
    validators do with the task's tokenizer; a pool of workers by URL has no tokenizer here, and
    counts 0: the request's own allowance (what a miner estimates) sizes it then."""

    def __init__(self, pool: Pool):
        self._engine = next((w.engine for w in pool.workers if isinstance(w, LocalWorker)
                             and hasattr(w.engine, "prompt_ids")), None)

    def prompt_tokens(self, request: ChatRequest) -> int:
        return len(self._engine.prompt_ids(request)) if self._engine is not None else 0


def image_sizes(config: MinerConfig, size: int | None) -> dict[str, int]:
    """Each image task's request size: ``size`` when given, else what its validators send: the
    cpu back end's tiny models are the local subnet's (64 px), anything else serves the network
    (1024 px)."""
    out = {}
    for task_id, entry in config.tasks.items():
        if TASKS[task_id].kind is Kind.CHAT:
            continue
        tiny = (entry.backend == "cpu" and not entry.model
                and not any(w.url for w in entry.workers or ()))
        out[task_id] = size or (CPU_IMAGE_SIZE if tiny else GPU_IMAGE_SIZE)
    return out


@dataclass
class Live:
    """A step as it runs: what the answered requests served, and how far those in flight are
    (chat: tokens received; images: the denoising step, from the pipeline's step callback)."""

    answered: int = 0
    served: float = 0.0
    streaming: dict[int, float] = field(default_factory=dict)  # request -> tokens so far
    denoising: dict[int, tuple[int, int]] = field(default_factory=dict)  # request -> (step, of)

    def line(self) -> str:
        flight = ""
        if self.denoising:
            flight = ", in flight: " + " ".join(f"image step {i}/{n}"
                                                for i, n in self.denoising.values())
        elif self.streaming:
            flight = f", in flight: {sum(self.streaming.values()):.0f} tokens"
        return f"{self.answered} answered, {self.served:.0f} units served{flight}"


class _Watched:
    """An image engine's pipeline, reporting each denoising step of each call to ``live``."""

    def __init__(self, pipeline) -> None:
        self._pipeline = pipeline
        self._calls = itertools.count()
        self.live: Live | None = None

    def __getattr__(self, name: str):
        return getattr(self._pipeline, name)

    def __call__(self, *args, **kwargs):
        live, call = self.live, next(self._calls)
        steps = int(kwargs.get("num_inference_steps") or 0)
        theirs = kwargs.get("callback_on_step_end")

        def step_end(pipe, i, t, tensors):
            out = theirs(pipe, i, t, tensors) if theirs is not None else {}
            if live is not None:
                live.denoising[call] = (i + 1, steps)
            return out

        kwargs["callback_on_step_end"] = step_end
        try:
            return self._pipeline(*args, **kwargs)
        finally:
            if live is not None:
                live.denoising.pop(call, None)


def watch_images(pool: Pool) -> list[_Watched]:
    """Report the denoising steps of ``pool``'s in-process image engines (none for workers
    reached by URL: their requests show when they are answered)."""
    watched = []
    for worker in pool.workers:
        engine = getattr(worker, "engine", None)
        pipeline = getattr(engine, "pipeline", None)
        if pipeline is not None and callable(pipeline):
            if not isinstance(pipeline, _Watched):
                pipeline = _Watched(pipeline)
                engine.pipeline = pipeline  # type: ignore[union-attr]
            watched.append(pipeline)
    return watched


async def serve_one(pool: Pool, request: TaskRequest, live: Live | None = None) -> float:
    """Units served for ``request``: the prompt and completion tokens, or the image steps."""
    if isinstance(request, ChatRequest):
        units, key = 0, id(request)
        try:
            async for chunk in pool.chat(request):
                units = chunk.units if chunk.done else units
                if live is not None and chunk.tokens:
                    live.streaming[key] = live.streaming.get(key, 0) + len(chunk.tokens)
        finally:
            if live is not None:
                live.streaming.pop(key, None)
        return float(units)
    await pool.images(request)
    return float(request.units)


async def measure(pool: Pool, task_id: str, concurrency: int, seconds: float,
                  image_size: int, rng: random.Random, *, tick_s: float = 0.0,
                  progress: Callable[[str], None] = print,
                  stop: asyncio.Event | None = None) -> tuple[Step, bool]:
    """``concurrency`` streams, each sending its next request when the last is answered; a line
    to ``progress`` every ``tick_s`` (0: none). When ``stop`` is set the step ends at once, from
    the requests answered so far; the second value says whether it was stopped."""
    task = TASKS[task_id]
    latencies: list[float] = []
    expected = 0.0
    live = Live()
    counts = EngineCounts(pool)
    for watched in watch_images(pool):
        watched.live = live
    end = time.monotonic() + seconds

    async def stream() -> None:
        nonlocal expected
        while time.monotonic() < end:
            request = synthetic_request(task_id, task.units_per_synthetic, rng, image_size,
                                        counts)
            began = time.monotonic()
            units = await serve_one(pool, request, live)
            latencies.append(time.monotonic() - began)
            live.served += units
            live.answered += 1
            expected = max(expected, task.expected_seconds(units))

    async def ticker() -> None:
        while True:
            await asyncio.sleep(tick_s)
            progress(f"    {task_id}: {concurrency} at once: {time.monotonic() - began:.0f} s "
                     f"of {seconds:g}: {live.line()}")

    began = time.monotonic()
    streams = asyncio.gather(*(stream() for _ in range(concurrency)))
    waits: set[asyncio.Future] = {streams}
    stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
    if stopping is not None:
        waits.add(stopping)
    ticking = asyncio.ensure_future(ticker()) if tick_s > 0 else None
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped = stop is not None and stop.is_set()
        for waiting in (stopping, ticking, streams):
            if waiting is not None and not waiting.done():
                waiting.cancel()
        for waiting in (stopping, ticking, streams):
            if waiting is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
    elapsed = time.monotonic() - began
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("inf")
    return Step(concurrency, len(latencies), live.served / elapsed if elapsed > 0 else 0.0, p95,
                expected or task.expected_seconds(task.units_per_synthetic)), stopped


def max_concurrency(config: MinerConfig, pools: dict[str, Pool], task_id: str) -> int:
    """What the miner serves the task at: its group's concurrency, its workers', else 1."""
    entry = config.tasks[task_id]
    if entry.group is not None:
        return config.groups[entry.group].concurrency
    return max(1, pools[task_id].concurrency())


async def calibrate(config: MinerConfig, pools: dict[str, Pool], *, seconds: float,
                    margin: float, period_seconds: float, image_size: int | None = None,
                    progress: Callable[[str], None] = print, seed: int = 0,
                    tick_s: float = 10.0, stop: asyncio.Event | None = None,
                    measured: Callable[[list[TaskCalibration]], None] | None = None
                    ) -> list[TaskCalibration]:
    """Each task's ladder in turn; ``measured`` is called with the results so far after each
    task (to write them as they come). With ``stop`` set, the tasks measured so far, the one
    cut short marked ``partial``; the tasks not reached are left out."""
    rng = random.Random(seed)
    sizes = image_sizes(config, image_size)
    groups: dict[str, int] = {}
    for entry in config.tasks.values():
        if entry.group is not None:
            groups[entry.group] = groups.get(entry.group, 0) + 1
    results: list[TaskCalibration] = []
    for task_id in config.tasks:
        if stop is not None and stop.is_set():
            break
        limit = max_concurrency(config, pools, task_id)
        ladder = sorted({min(limit, 2 ** i) for i in range(limit.bit_length() + 1)})
        size = sizes.get(task_id)
        steps = []
        stopped = False
        if size is not None:
            progress(f"{task_id}: requests of {size}x{size} px")
        for n, concurrency in enumerate(ladder, 1):
            step, stopped = await measure(pools[task_id], task_id, concurrency, seconds,
                                          size or GPU_IMAGE_SIZE, rng, tick_s=tick_s,
                                          progress=progress, stop=stop)
            steps.append(step)
            bar = "#" * n + "." * (len(ladder) - n)
            progress(f"[{bar}] {task_id}: {concurrency} at once: {step.requests} requests, "
                     f"{step.units_per_s:.1f} {TASKS[task_id].unit.value}/s, p95 "
                     f"{step.p95_s:.2f} s of {step.expected_s:.2f} s expected "
                     f"({'ok' if step.passed else 'too slow'})"
                     + (" (stopped: cut short)" if stopped else ""))
            if stopped or not step.passed:
                break  # more at once only waits longer
        entry = config.tasks[task_id]
        shared = groups.get(entry.group, 1) if entry.group is not None else 1
        best = best_step(steps)
        proposed = (best.units_per_s * period_seconds * margin / shared) if best else 0.0
        results.append(TaskCalibration(task_id, steps, shared, TASKS[task_id].clamp(proposed),
                                       size, partial=stopped))
        if measured is not None:
            measured(results)
    return results


def proposed_yaml(config: MinerConfig, results: list[TaskCalibration], margin: float,
                  period_seconds: float | None = None, stopped: str | None = None) -> str:
    """The capacity YAML with each task's proposed capacity (a task's workers scaled to it in
    proportion to what each declared). ``stopped``: why the run ended early; the header then
    says which tasks keep the capacity they had."""
    data = config.model_dump(exclude_none=True, exclude_defaults=True)
    data.setdefault("tasks", {})
    for r in results:
        entry = data["tasks"].setdefault(r.task, {})
        workers = entry.get("workers")
        if workers:
            total = sum(w["capacity"] for w in workers) or 1.0
            for w in workers:
                w["capacity"] = round(r.proposed * w["capacity"] / total)
        else:
            entry["capacity"] = round(r.proposed)
    period = f" of {period_seconds:g} s" if period_seconds else ""
    head = (f"# proposed by neurons/miner.py --calibrate with a margin of {margin:g}: what this "
            f"setup served at the tasks'\n# expected speed, per period{period}, times the "
            f"margin (docs/protocol.md §3)\n")
    sizes = ", ".join(f"{r.task} {r.image_size} px" for r in results if r.image_size)
    if sizes:
        head += f"# image requests measured at: {sizes}\n"
    cut = [r.task for r in results if r.partial]
    left = [t for t in config.tasks if t not in {r.task for r in results}]
    if stopped or cut or left:
        head += (f"# PARTIAL: {stopped or 'the calibration is still running'}; measured: "
                 f"{', '.join(r.task for r in results if not r.partial) or 'none'}"
                 + (f"; cut short (from the requests answered before it ended): "
                    f"{', '.join(cut)}" if cut else "")
                 + (f"; not measured (their capacity as in --config): {', '.join(left)}"
                    if left else "") + "\n")
    return head + yaml.safe_dump(data, sort_keys=False)


def write_atomic(path: Path, text: str) -> None:
    """``path`` holds the old text or the new, never a part: a stop while writing leaves it
    whole."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
