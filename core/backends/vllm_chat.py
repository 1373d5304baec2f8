"""Chat on vLLM (production, CUDA): the async engine batches concurrent requests; each streamed
token comes with its log-probability (vLLM's raw logprobs, before temperature and top-p, as the
transformers engine and the validator's checker compute them).

vllm is imported only here, and only when a task's back end is ``vllm``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from core.backends import prompt
from core.capacity import TaskEntry
from core.protocol import ChatRequest, ChatToken


class VllmChat:
    def __init__(self, engine, tokenizer):
        self.engine = engine
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, model: str, entry: TaskEntry) -> VllmChat:
        """Start an engine for ``model`` (hub id or folder) with the entry's GPU settings."""
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        args = AsyncEngineArgs(
            model=model, dtype=entry.dtype, gpu_memory_utilization=entry.gpu_memory_utilization,
            max_model_len=entry.max_model_len, tensor_parallel_size=entry.tensor_parallel_size,
            max_logprobs=1, enable_log_requests=False,
        )
        return cls(AsyncLLMEngine.from_engine_args(args), AutoTokenizer.from_pretrained(model))

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        return prompt.prompt_ids(self.tokenizer, request.messages)

    async def stream(self, request: ChatRequest) -> AsyncIterator[list[ChatToken]]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
            seed=request.seed, logprobs=0, output_kind=RequestOutputKind.DELTA,
        )
        request_id = uuid.uuid4().hex
        inputs = {"prompt_token_ids": self.prompt_ids(request)}
        try:
            async for output in self.engine.generate(inputs, params, request_id):
                completion = output.outputs[0]
                batch = [ChatToken(token_id=token_id, text=self.tokenizer.decode([token_id]),
                                   logprob=candidates[token_id].logprob)
                         for token_id, candidates in zip(completion.token_ids,
                                                         completion.logprobs or [])]
                if batch:
                    yield batch
        finally:  # the client went away, or the stream ended: free the engine's slot
            await self.engine.abort(request_id)
