"""OpenAI's wire format, every shape of it in one place: the requests the validator's API accepts
(chat and images), the chat request the project's client sends to ``vllm serve`` or a worker and
the worker reads, the server-sent events the API and the worker send, and the reading of such a
stream.

Token ids travel as vLLM writes them with ``return_tokens_as_token_ids``: ``"token_id:123"`` in
each log-probability entry, so the checker gets the ids it recomputes without a tokenizer here.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.errors import PeerFault
from core.protocol import (
    MAX_IMAGE_B64_CHARS,
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatToken,
    spread_text,
    stop_at,
)


class Text(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Turn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[Text]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


# Fields of OpenAI's request this API accepts only at their neutral value (anything else would be
# silently ignored: a 400 names it instead).
NEUTRAL: dict[str, tuple] = {
    "user": (), "logprobs": (False, None), "presence_penalty": (0, None),
    "frequency_penalty": (0, None), "parallel_tool_calls": (None, True, False),
}


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: Annotated[list[Turn], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stream: bool = False
    n: int = 1
    stream_options: dict | None = None
    stop: str | list[str] | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def unsupported(self) -> str | None:
        """The first field sent that this API does not implement, if any."""
        for name, value in (self.model_extra or {}).items():
            neutral = NEUTRAL.get(name)
            if neutral is None or (neutral and value not in neutral):
                return name
        return None


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a field not implemented is a 400 naming it
    model: str
    user: str | None = None  # OpenAI's end-user tag: accepted, unused
    prompt: str
    n: Annotated[int, Field(ge=1, le=4)] = 1
    size: str = "1024x1024"
    response_format: Literal["b64_json"] = "b64_json"
    seed: int | None = None
    # extension: denoising steps (default: the task's usual)
    steps: Annotated[int, Field(ge=1)] | None = None
    negative_prompt: str = ""
    guidance_scale: float = 7.0


class ImageToImageBody(ImagesRequest):
    image: Annotated[str, Field(max_length=MAX_IMAGE_B64_CHARS)]
    strength: float = 0.75


class InpaintBody(ImageToImageBody):
    mask: Annotated[str, Field(max_length=MAX_IMAGE_B64_CHARS)]
    strength: float = 1.0


def vllm_xargs(seed: int, temperature: float, top_p: float) -> dict[str, int | float]:
    """The arguments a vLLM request carries in ``SamplingParams.extra_args`` (``vllm_xargs`` in
    an OpenAI body) for ``core.backends.vllm_sampler`` to draw its tokens with the protocol's
    sampler (``core.sampler``)."""
    return {"sn19_seed": seed, "sn19_temperature": temperature, "sn19_top_p": top_p}


class CompletionBody(BaseModel):
    """A chat completion as the miner's remote client sends it (``OpenAIChat``, to ``vllm serve``
    or a worker) and as the worker reads it; other OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = ""
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stream: bool = False
    stream_options: dict | None = None
    logprobs: bool = False
    stop: str | list[str] | None = None  # the front end's request's stop sequences
    include_stop_str_in_output: bool = False  # vLLM: the text keeps the sequence (as the rule)
    top_logprobs: int = 0
    return_tokens_as_token_ids: bool = False  # vLLM: "token_id:123" in each logprob entry
    min_tokens: int = 0  # vLLM's name: no end-of-sequence before this many tokens
    # vLLM: SamplingParams.extra_args, here the protocol sampler's arguments (``vllm_xargs``)
    vllm_xargs: dict[str, int | float] | None = None

    @classmethod
    def of(cls, request: ChatRequest, model: str) -> CompletionBody:
        """The body that asks for ``request``'s completion, streamed, with every token's id and
        log-probability and the usage at the end, drawn by the protocol's sampler."""
        return cls(model=model, messages=request.messages, max_tokens=request.max_tokens,
                   temperature=request.temperature, top_p=request.top_p, seed=request.seed,
                   min_tokens=request.min_tokens,
                   vllm_xargs=vllm_xargs(request.seed, request.temperature, request.top_p),
                   stream=True, stop=request.stop or None,
                   include_stop_str_in_output=bool(request.stop),
                   stream_options={"include_usage": True}, logprobs=True,
                   return_tokens_as_token_ids=True)


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


class StreamError(PeerFault):
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
    return ChatChunk.of(tokens) if tokens else None
