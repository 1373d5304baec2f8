"""A chat request's prompt as a model sees it: the messages rendered with the tokenizer's chat
template, then tokenized. One rule, shared by the miner's engines (which charge for it) and the
validator (which counts it itself, docs/protocol.md §5): a tokenizer alone, no model, no torch."""

from __future__ import annotations

from core.protocol import ChatMessage


def render(tokenizer, messages: list[ChatMessage]) -> str:
    """The prompt text: the tokenizer's own chat template when it has one."""
    turns = [m.model_dump() for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return "".join(f"<|{m['role']}|>{m['content']}\n" for m in turns) + "<|assistant|>"


def prompt_ids(tokenizer, messages: list[ChatMessage]) -> list[int]:
    """The prompt's token ids: the rendered text tokenized as it is (a template writes its own
    special tokens, so none are added)."""
    return tokenizer(render(tokenizer, messages), add_special_tokens=False)["input_ids"]
