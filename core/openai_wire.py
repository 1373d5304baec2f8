"""OpenAI's chat-completion wire format, both ways: the server-sent events the validator's API and
the project's worker send, and the reading of such a stream (from ``vllm serve`` or a worker).

Token ids travel as vLLM writes them with ``return_tokens_as_token_ids``: ``"token_id:123"`` in
each log-probability entry, so the checker gets the ids it recomputes without a tokenizer here.
"""

from __future__ import annotations

import json

from core.protocol import ChatChunk, ChatToken, spread_text, stop_at

DONE = b"data: [DONE]\n\n"
TOKEN_ID_PREFIX = "token_id:"


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunk_event(ident: str, created: int, model: str, delta: dict, finish: str | None = None,
                logprobs: list[ChatToken] | None = None) -> bytes:
    """One ``chat.completion.chunk``; with ``logprobs``, each token's id and log-probability."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = {"content": [
            {"token": f"{TOKEN_ID_PREFIX}{t.token_id}", "logprob": t.logprob,
             "bytes": list(t.text.encode()), "top_logprobs": []} for t in logprobs]}
    return event({"id": ident, "object": "chat.completion.chunk", "created": created,
                  "model": model, "choices": [choice]})


def usage_event(ident: str, created: int, model: str, prompt: int, completion: int) -> bytes:
    """The last chunk when the client asked for ``stream_options.include_usage``."""
    return event({"id": ident, "object": "chat.completion.chunk", "created": created,
                  "model": model, "choices": [],
                  "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion}})


def finish_reason(completion_tokens: int, max_tokens: int, stopped: bool = False) -> str:
    return "length" if completion_tokens >= max_tokens and not stopped else "stop"


class StopFilter:
    """The text a client gets of a completion with stop sequences: what comes before the first
    one (``stop_at``), as it streams. The last ``longest - 1`` characters are held back while
    they could still begin a sequence that the next piece completes."""

    def __init__(self, stop: list[str]):
        self.stop = stop
        self.keep = max(map(len, stop), default=1) - 1
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self.held + piece
        i = stop_at(text, self.stop)
        if i is not None:
            self.stopped, self.held = True, ""
            return text[:i]
        cut = max(len(text) - self.keep, 0)
        out, self.held = text[:cut], text[cut:]
        return out

    def flush(self) -> str:
        """What is still held when the completion ends without a stop sequence."""
        out, self.held = self.held, ""
        return out


class StreamError(Exception):
    """The server's stream carried an error event, or something that is not a chat chunk."""


def read_chunk(line: bytes) -> ChatChunk | None | bool:
    """One line of a chat-completion event stream: the tokens it carries (a ChatChunk), the final
    usage (a ChatChunk with ``done``), True at ``[DONE]``, None for lines that carry nothing."""
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return True
    try:
        payload = json.loads(data)
    except ValueError:
        raise StreamError(f"not JSON: {data[:80]!r}") from None
    if "error" in payload:
        raise StreamError(str(payload["error"].get("message", payload["error"])))
    if payload.get("usage") and not payload.get("choices"):
        usage = payload["usage"]
        return ChatChunk(done=True, prompt_tokens=usage["prompt_tokens"],
                         completion_tokens=usage["completion_tokens"])
    choices = payload.get("choices") or [{}]
    entries = ((choices[0].get("logprobs") or {}).get("content")) or []
    text = (choices[0].get("delta") or {}).get("content") or ""
    tokens = []
    for entry, piece in zip(entries, spread_text(text, len(entries))):
        token = entry.get("token", "")
        if not token.startswith(TOKEN_ID_PREFIX):
            raise StreamError("the server did not return token ids: it must accept "
                              "return_tokens_as_token_ids (vllm serve does)")
        tokens.append(ChatToken(token_id=int(token[len(TOKEN_ID_PREFIX):]), text=piece,
                                logprob=entry["logprob"]))
    return ChatChunk(tokens=tokens) if tokens else None
