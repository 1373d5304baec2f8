"""The protocol's sampler (``core.sampler``) inside vLLM V1, as a custom logits processor: the
in-process engine (``core.backends.vllm_chat``) loads it, and so does
``vllm serve --logits-processors core.backends.vllm_sampler:ProtocolSampler``.

Why it works (vLLM 0.32, ``vllm/v1/sample/sampler.py``): ``Sampler.forward`` computes the raw
logprobs it reports from the model's logits *before* any logits processor, so the logprobs a
miner streams stay the model's own; custom processors that are not argmax-invariant run in
``apply_logits_processors`` after the built-in ones (``build_logitsprocs`` chains
``BUILTIN_LOGITS_PROCESSORS`` first, min_tokens among them: its -inf on stop ids is what
``core.sampler`` masks too) and before greedy or random sampling. This processor sets every
logit of a row but the protocol's token to -inf, so whatever vLLM samples then (greedy, or at
the request's temperature and top-p for ``vllm serve``) is that token.

A request opts in through ``SamplingParams.extra_args`` (``vllm_xargs`` in an OpenAI body):
``sn19_seed``, ``sn19_temperature`` and ``sn19_top_p`` (``core.openai_wire.vllm_xargs``);
``min_tokens`` and the end-of-sequence ids are vLLM's own (``params.min_tokens``,
``params.all_stop_token_ids``). Other
requests are left to vLLM's sampler. The position is the request's output tokens so far (the
list vLLM hands the processor grows as it generates).
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from core import sampler

# seed, temperature, top_p, min_tokens, end-of-sequence ids, the output tokens so far
_State = tuple[int, float, float, int, frozenset[int], list[int]]


class ProtocolSampler(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.requests: dict[int, _State] = {}  # batch row -> its request's arguments

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams):
        args = sampling_params.extra_args or {}
        if "sn19_seed" in args and not all(
                isinstance(args.get(k), (int, float)) for k in ("sn19_temperature", "sn19_top_p")):
            raise ValueError("sn19_seed needs sn19_temperature and sn19_top_p")

    def is_argmax_invariant(self) -> bool:
        return False  # it picks the token, greedy sampling included

    @staticmethod
    def _state(params: SamplingParams, _prompt: list[int] | None, output: list[int]
               ) -> _State | None:
        args = params.extra_args or {}
        if "sn19_seed" not in args:
            return None
        return (int(args["sn19_seed"]), float(args["sn19_temperature"]),
                float(args["sn19_top_p"]), params.min_tokens,
                frozenset(params.all_stop_token_ids), output)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.requests, batch_update, self._state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.requests:
            return logits
        rows = [r for r in sorted(self.requests) if r < logits.shape[0]]
        states = [self.requests[r] for r in rows]
        eos = frozenset().union(*(s[4] for s in states))
        if any(s[4] != eos for s in states):  # one model, one set: but never mask another's
            tokens = [sampler.draw(logits[r], s[0], len(s[5]), s[1], s[2], s[3], s[4])
                      for r, s in zip(rows, states)]
        else:
            tokens = sampler.draw_rows(logits[rows], [s[0] for s in states],
                                       [len(s[5]) for s in states], [s[1] for s in states],
                                       [s[2] for s in states], [s[3] for s in states], eos)
        index = torch.tensor(rows, device=logits.device)
        chosen = torch.tensor(tokens, device=logits.device)
        logits[index] = float("-inf")
        logits[index, chosen] = 0.0
        return logits
