"""Chat on transformers: a plain sampling loop with a KV cache, so every token comes with the
model's log-probability and the stream is deterministic for a seed (CPU back end; the validator's
CPU reference for checking reuses ``token_logprobs``)."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Iterator

import torch

from core import sampler
from core.backends import prompt
from core.backends.tokens import Detokenizer, eos_ids
from core.protocol import ChatRequest, ChatToken, stop_at


class TransformersChat:
    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eos = eos_ids(tokenizer, getattr(model, "generation_config", None))
        # transformers renamed past_key_values to cache (5.2x); vllm's pin keeps older releases
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def tiny(cls, seed: int) -> TransformersChat:
        from core.backends import tiny

        return cls(tiny.chat_model(seed), tiny.chat_tokenizer())

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", dtype: str = "auto"
                        ) -> TransformersChat:
        """``auto`` dtype is bfloat16 on CUDA (as production serves) and float32 on the CPU."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        model = model.to(device)  # type: ignore[arg-type]  # transformers types .to oddly
        return cls(model, AutoTokenizer.from_pretrained(path))

    def save_pretrained(self, path: str) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        return prompt.prompt_ids(self.tokenizer, request.messages)

    async def stream(self, request: ChatRequest) -> AsyncIterator[list[ChatToken]]:
        """The sampling loop in a worker thread; its tokens handed to the event loop in batches of
        what is ready."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()  # set when the consumer goes away: the thread stops sampling
        done = object()

        def pump():
            try:
                for token in self.tokens(request):
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, token)
            except BaseException as e:  # surface the engine's error in the stream
                loop.call_soon_threadsafe(queue.put_nowait, e)
            loop.call_soon_threadsafe(queue.put_nowait, done)

        worker = loop.run_in_executor(None, pump)
        try:
            finished = False
            while not finished:
                batch = []
                item = await queue.get()
                while True:
                    if item is done:
                        finished = True
                        break
                    if isinstance(item, BaseException):
                        raise item
                    batch.append(item)
                    if queue.empty():
                        break
                    item = queue.get_nowait()
                if batch:
                    yield batch
        finally:
            stop.set()
            await asyncio.shield(worker)

    @torch.inference_mode()
    def tokens(self, request: ChatRequest) -> Iterator[ChatToken]:
        """The sampling loop itself, synchronous (the checker's CPU reference reuses it). Each
        token is the protocol sampler's draw (``core.sampler.draw``) from the model's logits on
        the model's device: its noise is a function of the seed and position, so a seed draws
        the same tokens from the same logits on any device."""
        device = self.model.device
        ids = torch.tensor([self.prompt_ids(request)], device=device)
        past = None
        text = Detokenizer(self.tokenizer)
        completion = ""
        for position in range(request.max_tokens):
            out = self.model(input_ids=ids, use_cache=True, **{self._cache_kw: past})
            past = getattr(out, self._cache_kw)
            logits = out.logits[0, -1].float()
            token = sampler.draw(logits, request.seed, position, request.temperature,
                                 request.top_p, request.min_tokens, self.eos)
            logprob = torch.log_softmax(logits, -1)[token].item()
            piece = text.add(token)
            completion += piece
            yield ChatToken(token_id=token, text=piece, logprob=logprob)
            stopped = request.stop and stop_at(completion, request.stop) is not None
            if token in self.eos or stopped:
                return
            ids = torch.tensor([[token]], device=device)

    @torch.inference_mode()
    def completion_logits(self, request: ChatRequest, token_ids: list[int]) -> torch.Tensor:
        """The model's logits before each completion token, in one forward pass over prompt and
        completion: shape (len(token_ids), vocab). The checker's reference."""
        head = self.prompt_ids(request)
        ids = torch.tensor([head + list(token_ids)], device=self.model.device)
        logits = self.model(input_ids=ids).logits[0].float().cpu()
        return logits[len(head) - 1: len(head) - 1 + len(token_ids)]

