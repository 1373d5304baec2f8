"""The task table of docs/protocol.md §1: fixed protocol data shared by every miner and validator.

Changing any row is a protocol change: bump ``PROTOCOL_VERSION`` in ``core.protocol``.
Every validator must use the same weights, or their weight vectors drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from core.chain_time import PERIOD_SECONDS


class Kind(str, Enum):
    CHAT = "chat"
    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"
    INPAINT = "inpaint"


class Unit(str, Enum):
    TOKENS = "tokens"
    STEPS = "steps"


# docs/protocol.md §1: a task's maximum is what one node of NODE_GPUS GPUs serves in a period at
# the task's expected speed, so a real GPU node declares under it and gains nothing by splitting
# into UIDs (§11). A GPU serves ``streams_per_gpu`` requests at once, each at ``seconds_per_unit``.
NODE_GPUS = 8


@dataclass(frozen=True)
class Task:
    id: str
    kind: Kind
    unit: Unit
    weight: float
    max_capacity: int  # node_capacity(streams_per_gpu, seconds_per_unit)
    units_per_synthetic: int
    model: str
    overhead_s: float
    seconds_per_unit: float
    streams_per_gpu: int

    def expected_seconds(self, units: float) -> float:
        """How long a request of ``units`` may take on the production GPU before speed costs."""
        return self.overhead_s + self.seconds_per_unit * units

    def clamp(self, declared: float) -> float:
        """docs/protocol.md §3.1: a declared value is clamped to [0, max]; below one unit, 0."""
        if not math.isfinite(declared) or declared < 1:
            return 0.0
        return float(min(declared, self.max_capacity))


def node_capacity(streams_per_gpu: int, seconds_per_unit: float) -> int:
    """Units one node serves in a production period: every GPU's streams busy the whole period,
    each at the task's expected speed."""
    return round(NODE_GPUS * streams_per_gpu * PERIOD_SECONDS / seconds_per_unit)


def _t(id, kind, unit, weight, streams, per_request, model, overhead_s, s_per_unit) -> Task:
    return Task(id, kind, unit, weight, node_capacity(streams, s_per_unit), per_request, model,
                overhead_s, s_per_unit, streams)


# Streams a GPU serves at the expected speed: an 8B model on vLLM batches 64 streams of 50
# tokens/s on one 80 GB GPU; Mixtral-8x7B (bf16, ~94 GB) runs on two GPUs, 64 streams of 33
# tokens/s each, so 32 a GPU; an SDXL pipeline makes one 1024 px image at a time.
_K, _U = Kind, Unit
_ROWS = (
    _t("chat-llama-3", _K.CHAT, _U.TOKENS, 0.20, 64, 300,
       "meta-llama/Meta-Llama-3.1-8B-Instruct", 0.5, 0.02),
    _t("chat-mixtral", _K.CHAT, _U.TOKENS, 0.15, 32, 300,
       "mistralai/Mixtral-8x7B-Instruct-v0.1", 0.5, 0.03),
    _t("proteus-text-to-image", _K.TEXT_TO_IMAGE, _U.STEPS, 0.15, 1, 10,
       "dataautogpt3/ProteusV0.4-Lightning", 1.0, 0.12),
    _t("playground-text-to-image", _K.TEXT_TO_IMAGE, _U.STEPS, 0.10, 1, 50,
       "playgroundai/playground-v2.5-1024px-aesthetic", 1.0, 0.12),
    _t("dreamshaper-text-to-image", _K.TEXT_TO_IMAGE, _U.STEPS, 0.05, 1, 10,
       "Lykon/dreamshaper-xl-lightning", 1.0, 0.12),
    _t("proteus-image-to-image", _K.IMAGE_TO_IMAGE, _U.STEPS, 0.10, 1, 10,
       "dataautogpt3/ProteusV0.4-Lightning", 1.0, 0.12),
    _t("playground-image-to-image", _K.IMAGE_TO_IMAGE, _U.STEPS, 0.05, 1, 50,
       "playgroundai/playground-v2.5-1024px-aesthetic", 1.0, 0.12),
    _t("dreamshaper-image-to-image", _K.IMAGE_TO_IMAGE, _U.STEPS, 0.05, 1, 10,
       "Lykon/dreamshaper-xl-lightning", 1.0, 0.12),
    _t("inpaint", _K.INPAINT, _U.STEPS, 0.15, 1, 20,
       "diffusers/stable-diffusion-xl-1.0-inpainting-0.1", 1.0, 0.12),
)

TASKS: MappingProxyType[str, Task] = MappingProxyType({t.id: t for t in _ROWS})
TASK_IDS: tuple[str, ...] = tuple(TASKS)


def check_weights(tasks) -> None:
    """Task weights must be positive and sum to exactly 1 (to float precision)."""
    total = math.fsum(t.weight for t in tasks)
    if any(t.weight <= 0 for t in tasks) or not math.isclose(total, 1.0, abs_tol=1e-12):
        raise ValueError(f"task weights must be positive and sum to 1, got {total!r}")


check_weights(TASKS.values())
