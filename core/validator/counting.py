"""The validator counts the units it pays for (docs/protocol.md §5): a chat prompt's tokens with
the task's own tokenizer, never the miner's figure.

Only the tokenizer is loaded (no model, no torch), once per task: ``production`` loads the task's
model's tokenizer (``core/tasks.py``; from the Hugging Face cache or hub), ``tiny`` builds the
local subnet's byte-level tokenizer offline. What the miner reports is checked against this count.
"""

from __future__ import annotations

from functools import lru_cache

from core.backends.prompt import prompt_ids
from core.errors import SetupError
from core.protocol import ChatMessage, ChatRequest
from core.tasks import TASKS, Kind

TOKENIZERS = ("production", "tiny")
MEMO_CHARS = 4096  # prompts up to this long are remembered: a synthetic one is counted once
#                    when it is sized and again when its units are reserved


class CountingError(SetupError):
    """A task's tokenizer cannot be loaded: the validator cannot count its prompts."""


class PromptCounter:
    def __init__(self, tokenizers: str = "production"):
        if tokenizers not in TOKENIZERS:
            raise ValueError(f"tokenizers must be one of {TOKENIZERS}, not {tokenizers!r}")
        self.tokenizers = tokenizers
        self._loaded: dict[str, object] = {}
        self._memo = lru_cache(maxsize=1024)(self._count)

    def tokenizer(self, task: str):
        """The task's tokenizer, loaded on first use (``load`` does it at start-up)."""
        if task not in self._loaded:
            if self.tokenizers == "tiny":
                from core.backends import tiny

                self._loaded[task] = tiny.chat_tokenizer()
            else:
                from transformers import AutoTokenizer

                model = TASKS[task].model
                try:
                    self._loaded[task] = AutoTokenizer.from_pretrained(model)
                except (OSError, ValueError) as e:
                    raise CountingError(
                        f"cannot load the tokenizer of {model} to count {task} prompts "
                        f"({str(e).splitlines()[0]}); "
                        f"make it reachable (huggingface-cli login, or HF_HOME with it cached)"
                    ) from None
        return self._loaded[task]

    def load(self) -> None:
        """Load every chat task's tokenizer now: a validator that cannot count refuses to start."""
        for task in TASKS.values():
            if task.kind is Kind.CHAT:
                self.tokenizer(task.id)

    def prompt_tokens(self, request: ChatRequest) -> int:
        turns = tuple((m.role, m.content) for m in request.messages)
        if sum(len(content) for _, content in turns) <= MEMO_CHARS:
            return self._memo(request.task, turns)
        return self._count(request.task, turns)

    def _count(self, task: str, turns: tuple[tuple[str, str], ...]) -> int:
        messages = [ChatMessage.model_construct(role=role, content=content)
                    for role, content in turns]
        return len(prompt_ids(self.tokenizer(task), messages))
