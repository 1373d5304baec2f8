"""What serves a task, behind one small interface. Chat engines stream asynchronously (vLLM batches
concurrent requests in its own loop; the transformers engine runs in a worker thread); image
engines are synchronous and run in worker threads. GPU libraries are imported only when a GPU back
end is chosen."""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from core.backends.spec import EngineSpec, serves
from core.protocol import ChatRequest, ChatToken, ImageRequest
from core.tasks import TASKS, Kind


class _TorchvisionFallback(logging.Filter):
    """transformers warns, on every start, that each image processor diffusers' pipelines import
    falls back to its PIL version without torchvision: the fallback is what the project uses (it
    installs no torchvision, and vLLM's venv removes it), so the warning says nothing to an
    operator and is dropped; the library's other messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallback())


class ChatEngine(Protocol):
    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The prompt as the model's tokenizer counts it (the units charged for it)."""

    def stream(self, request: ChatRequest) -> AsyncIterator[list[ChatToken]]:
        """Completion tokens in order, sampled with the request's seed, temperature and top-p,
        each with the model's log-probability of it; in batches of whatever is ready, so a busy
        server sends fewer, fuller messages."""


class ImageEngine(Protocol):
    def generate(self, request: ImageRequest) -> list[bytes]:
        """PNG bytes, one per image, generated with the request's seed and steps."""


Engine = ChatEngine | ImageEngine


def tiny_seed(task_id: str) -> int:
    """Tasks that name one production model share one tiny model, as they would share weights."""
    return zlib.crc32(TASKS[task_id].model.encode())


def load_engine(task_id: str, spec: EngineSpec = EngineSpec()) -> Engine:
    """The engine ``spec`` asks for: ``model`` is a local path (or hub id for the GPU back ends);
    with the cpu back end and no model, a tiny model is built from configs."""
    kind = TASKS[task_id].kind
    if not serves(spec.backend, kind):
        raise ValueError(f"task {task_id}: the {spec.backend} back end cannot serve "
                         f"{kind.value} tasks")
    if kind is Kind.CHAT:
        if spec.backend == "vllm":
            from core.backends.vllm_chat import VllmChat

            return VllmChat.load(spec.model or TASKS[task_id].model, spec)
        from core.backends.transformers_chat import TransformersChat

        if spec.model:
            return TransformersChat.from_pretrained(spec.model)
        return TransformersChat.tiny(tiny_seed(task_id))
    from core.backends.diffusers_images import DiffusersImages

    if spec.backend == "diffusers":
        return DiffusersImages.from_pretrained(spec.model or TASKS[task_id].model, kind,
                                               device=spec.device, dtype=spec.dtype)
    if spec.model:
        return DiffusersImages.from_pretrained(spec.model, kind, device="cpu")
    return DiffusersImages(DiffusersImages.tiny_pipeline(tiny_seed(task_id)), kind)


def backend_problems(backends: Iterable[str]) -> list[str]:
    """What would stop these back ends from loading on this machine (missing packages, no GPU),
    found without importing them."""
    import importlib.util

    needs = {"cpu": ("torch", "transformers", "diffusers"), "vllm": ("vllm", "transformers"),
             "diffusers": ("torch", "diffusers")}
    extra = {"cpu": "cpu", "vllm": "gpu", "diffusers": "gpu"}
    problems = []
    for backend in sorted(set(backends)):
        missing = [m for m in needs[backend] if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(f"the {backend} back end needs {', '.join(missing)}: "
                            f"pip install -e '.[{extra[backend]}]'")
        elif backend != "cpu":
            import torch

            if not torch.cuda.is_available():
                problems.append(f"the {backend} back end needs a CUDA GPU and torch sees none")
    return problems
