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
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from core.miner.config import MinerConfig
from core.miner.pool import Pool
from core.protocol import (
    ChatRequest,
    ImageToImageRequest,
    InpaintRequest,
    TaskRequest,
    TextToImageRequest,
)
from core.request_shapes import (
    chars_within,
    conversation,
    image_prompt,
    noise_and_mask,
    prompt_budget,
)
from core.tasks import TASKS, Kind


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

    @property
    def best(self) -> Step | None:
        return best_step(self.steps)


def best_step(steps: list[Step]) -> Step | None:
    """The passing step that served the most."""
    return max((s for s in steps if s.passed), key=lambda s: s.units_per_s, default=None)


def request_for(task_id: str, rng: random.Random, image_size: int) -> TaskRequest:
    """A request of the task's synthetic size and shape (docs/protocol.md §3): a chat prompt of
    the corpus within the prompt's budget and the rest of the units as completion; an image of
    ``image_size`` pixels."""
    task = TASKS[task_id]
    if task.kind is Kind.CHAT:
        messages = conversation(rng, chars_within(prompt_budget(task.units_per_synthetic)))
        request = ChatRequest(task=task_id, messages=messages, temperature=1.0,
                              seed=rng.getrandbits(62))
        request.max_tokens = max(1, task.units_per_synthetic - request.prompt_allowance())
        return request
    text = image_prompt(rng)
    if task.kind is Kind.TEXT_TO_IMAGE:
        return TextToImageRequest(task=task_id, prompt=text, steps=task.units_per_synthetic,
                                  seed=rng.getrandbits(62), height=image_size, width=image_size)
    image, mask = noise_and_mask(image_size, rng.getrandbits(64))
    if task.kind is Kind.IMAGE_TO_IMAGE:
        return ImageToImageRequest(task=task_id, prompt=text, steps=task.units_per_synthetic,
                                   seed=rng.getrandbits(62), height=image_size,
                                   width=image_size, init_image=image)
    return InpaintRequest(task=task_id, prompt=text, steps=task.units_per_synthetic,
                          seed=rng.getrandbits(62), height=image_size, width=image_size,
                          init_image=image, mask_image=mask)


async def serve_one(pool: Pool, request: TaskRequest) -> float:
    """Units served for ``request``: the prompt and completion tokens, or the image steps."""
    if isinstance(request, ChatRequest):
        units = 0
        async for chunk in pool.chat(request):
            units = chunk.units if chunk.done else units
        return float(units)
    await pool.images(request)
    return float(request.units)


async def measure(pool: Pool, task_id: str, concurrency: int, seconds: float,
                  image_size: int, rng: random.Random) -> Step:
    """``concurrency`` streams, each sending its next request when the last is answered."""
    task = TASKS[task_id]
    latencies: list[float] = []
    served = 0.0
    expected = 0.0
    end = time.monotonic() + seconds

    async def stream() -> None:
        nonlocal served, expected
        while time.monotonic() < end:
            request = request_for(task_id, rng, image_size)
            began = time.monotonic()
            units = await serve_one(pool, request)
            latencies.append(time.monotonic() - began)
            served += units
            expected = max(expected, task.expected_seconds(units))

    began = time.monotonic()
    await asyncio.gather(*(stream() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("inf")
    return Step(concurrency, len(latencies), served / elapsed, p95,
                expected or task.expected_seconds(task.units_per_synthetic))


def max_concurrency(config: MinerConfig, pools: dict[str, Pool], task_id: str) -> int:
    """What the miner serves the task at: its group's concurrency, its workers', else 1."""
    entry = config.tasks[task_id]
    if entry.group is not None:
        return config.groups[entry.group].concurrency
    return max(1, pools[task_id].concurrency())


async def calibrate(config: MinerConfig, pools: dict[str, Pool], *, seconds: float,
                    margin: float, period_seconds: float, image_size: int = 1024,
                    progress: Callable[[str], None] = print, seed: int = 0
                    ) -> list[TaskCalibration]:
    rng = random.Random(seed)
    groups: dict[str, int] = {}
    for entry in config.tasks.values():
        if entry.group is not None:
            groups[entry.group] = groups.get(entry.group, 0) + 1
    results = []
    for task_id in config.tasks:
        limit = max_concurrency(config, pools, task_id)
        ladder = sorted({min(limit, 2 ** i) for i in range(limit.bit_length() + 1)})
        steps = []
        for n, concurrency in enumerate(ladder, 1):
            step = await measure(pools[task_id], task_id, concurrency, seconds, image_size, rng)
            steps.append(step)
            bar = "#" * n + "." * (len(ladder) - n)
            progress(f"[{bar}] {task_id}: {concurrency} at once: {step.requests} requests, "
                     f"{step.units_per_s:.1f} {TASKS[task_id].unit.value}/s, p95 "
                     f"{step.p95_s:.2f} s of {step.expected_s:.2f} s expected "
                     f"({'ok' if step.passed else 'too slow'})")
            if not step.passed:
                break  # more at once only waits longer
        entry = config.tasks[task_id]
        shared = groups.get(entry.group, 1) if entry.group is not None else 1
        best = best_step(steps)
        proposed = (best.units_per_s * period_seconds * margin / shared) if best else 0.0
        results.append(TaskCalibration(task_id, steps, shared, TASKS[task_id].clamp(proposed)))
    return results


def proposed_yaml(config: MinerConfig, results: list[TaskCalibration], margin: float) -> str:
    """The capacity YAML with each task's proposed capacity (a task's workers scaled to it in
    proportion to what each declared)."""
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
    head = (f"# proposed by neurons/miner.py --calibrate with a margin of {margin:g}: what this "
            f"setup served at the tasks'\n# expected speed, per period, times the margin "
            f"(docs/protocol.md §3)\n")
    return head + yaml.safe_dump(data, sort_keys=False)
