"""Rules about a completion's tokens that the miner's engines and the validator's checker must
share: which ids end a completion, and how a stream of ids becomes text."""

from __future__ import annotations


def eos_ids(tokenizer, generation_config=None) -> frozenset[int]:
    """Every id that ends a completion: the tokenizer's end-of-sequence token and each
    ``eos_token_id`` of the model's generation config (Llama 3.1 lists several; vLLM stops on
    all of them, so an honest completion may end on any)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(generation_config, "eos_token_id", None)
    if configured is not None:
        ids.update(int(i) for i in (configured if isinstance(configured, (list, tuple))
                                    else [configured]))
    return frozenset(ids)


class Detokenizer:
    """The text of a growing completion, piece by piece. A piece is held back while it ends in an
    incomplete character (a multi-byte character split over tokens decodes to U+FFFD alone), and
    special tokens (the end-of-sequence text) are left out. vLLM's incremental detokenization,
    simplified: each step decodes only from the last emitted offset."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        # the ids' own text, no spaces "cleaned up" (Llama 3.1's config asks for it): what the
        # validator decodes them to (``core.validator.dispatch.ChatText``) and vLLM sends
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True,
                        clean_up_tokenization_spaces=False)
        text = decode(self.ids[self.prefix:], skip_special_tokens=True,
                      clean_up_tokenization_spaces=False)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before):]
