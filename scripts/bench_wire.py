"""What a chat answer's wire costs per token, each figure a line `name: value unit`, the formats
and their floors measured in the same run on the same tokens:

- validator: CPU seconds per million tokens to judge a stream's lines as the validator does
  (``core.validator.dispatch.ChatLines``: parsed, every figure bounded, columns that agree, the
  counts) and keep their tokens (``ChatTokens``), for protocol 8's columnar lines (`new`) and for
  protocol 7's, a JSON object per token parsed into a checked object per token (`old`, kept here
  as the reference); its floor: the same bytes parsed as JSON into plain Python objects and
  nothing else (``pydantic_core.from_json``, the fastest JSON reader at hand).
- miner: CPU seconds per million tokens from its engine's batches of tokens (one token each, as
  the engines hand them over) to the lines it writes (``core.miner.app.wire_lines``), new and
  old; its floor: the same lines' content, already plain lists, written as JSON and nothing else
  (``pydantic_core.to_json``).
- validator_text: the validator's line reading as above plus the check that each line's text
  is what its ids decode to (``core.validator.dispatch.ChatText``, the task's tokenizer: the
  local subnet's byte-level one here, production tokenizers are not on this machine), on honest
  lines of the tiny engine's text (a token a byte, non-ASCII split over tokens); its reference,
  validator_new_tiny, the same lines read without the check, in the same run.
- bytes per token of each format.

Each at --per-line tokens a line: 1 (a line per token), 10 (what a line every 0.2 s, the miner's
LINE_INTERVAL_S, holds at the chat tasks' expected 0.02 s a token), 128 (the most a line holds).
Each figure is the fastest of --repeats runs (other work on the machine only slows a run).

    python scripts/bench_wire.py [--tokens 200000] [--per-line 1,10,128] [--quick]
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as checked_dataclass
from pydantic_core import from_json, to_json

from core.backends import tiny
from core.backends.tokens import Detokenizer
from core.cli import parser
from core.miner.app import wire_lines
from core.protocol import (
    MAX_COMPLETION,
    MAX_COUNT,
    MAX_TOKEN_TEXT,
    ChatChunk,
    ChatRequest,
    ChatToken,
    ChatTokens,
    Message,
)
from core.validator.dispatch import ChatLines, ChatText

STREAM_TOKENS = 1280  # tokens of one answer: a whole number of lines at 1, 10 and 128 a line
# what tokens' texts look like: mostly short pieces of words, some non-ASCII, some escaped in JSON
PIECES = [" the", " of", "ing", " and", ",", ".", " a", " to", "\n", " über", " 日本", "\"",
          " model", "s", " (", "1", "2", ")", " capacity", "\t"]


@checked_dataclass(frozen=True, slots=True, config=ConfigDict(allow_inf_nan=False))
class OldToken:
    """Protocol 7's token on the wire: an object each."""

    token_id: Annotated[int, Field(ge=0, lt=MAX_COUNT)]
    text: Annotated[str, Field(max_length=MAX_TOKEN_TEXT)]
    logprob: Annotated[float, Field(ge=-1e6, le=1e-3)]


class OldChunk(Message):
    """Protocol 7's chat line."""

    tokens: Annotated[list[OldToken], Field(max_length=MAX_COMPLETION)] = []
    done: bool = False
    prompt_tokens: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0
    completion_tokens: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0


def engine_tokens(n: int, seed: int) -> list[ChatToken]:
    rng = random.Random(seed)
    return [ChatToken(rng.randrange(0, 128_256), rng.choice(PIECES), -rng.expovariate(1.0))
            for _ in range(n)]


def new_lines(tokens: list[ChatToken], per_line: int) -> list[bytes]:
    """The miner's work for one answer: each engine batch made a chunk (``core.miner.pool``),
    held, then written as lines (``core.miner.app``)."""
    out: list[bytes] = []
    for start in range(0, len(tokens), per_line):
        held = ChatTokens()
        for token in tokens[start:start + per_line]:
            held.add(ChatChunk.of([token]))
        out += wire_lines(held)
    final = ChatChunk(done=True, prompt_tokens=10, completion_tokens=len(tokens))
    return [*out, final.model_dump_json().encode() + b"\n"]


def old_lines(tokens: list[OldToken], per_line: int) -> list[bytes]:
    """Protocol 7's miner: the same, with a token object each."""
    out: list[bytes] = []
    for start in range(0, len(tokens), per_line):
        held: list[OldToken] = []
        for token in tokens[start:start + per_line]:
            held += OldChunk(tokens=[token]).tokens
        out.append(OldChunk(tokens=held).model_dump_json().encode() + b"\n")
    final = OldChunk(done=True, prompt_tokens=10, completion_tokens=len(tokens))
    return [*out, final.model_dump_json().encode() + b"\n"]


def plain_lines(tokens: list[ChatToken], per_line: int, columns: bool) -> list[dict]:
    """Each line's content as plain dicts and lists, for the encoding floor."""
    out: list[dict] = []
    for start in range(0, len(tokens), per_line):
        part = tokens[start:start + per_line]
        if columns:
            out.append({"version": "8.0.0", "ids": [t.token_id for t in part],
                        "logprobs": [t.logprob for t in part],
                        "text": "".join(t.text for t in part),
                        "lengths": [len(t.text) for t in part]})
        else:
            out.append({"version": "7.0.0", "tokens": [
                {"token_id": t.token_id, "text": t.text, "logprob": t.logprob} for t in part]})
    return out


def new_validator(lines: list[bytes], request: ChatRequest) -> int:
    judge, kept = ChatLines(request, 10), ChatTokens()
    for line in lines:
        kept.add(judge.read(line))
    return len(kept)


def honest_lines(tokenizer, seed: int, per_line: int) -> list[bytes]:
    """An answer of STREAM_TOKENS tokens whose text is its ids' (as the engines detokenize)."""
    rng, text = random.Random(seed), ""
    while len(tokenizer.encode(text, add_special_tokens=False)) < STREAM_TOKENS:
        text += "".join(rng.choice(PIECES) for _ in range(64))
    ids = tokenizer.encode(text, add_special_tokens=False)[:STREAM_TOKENS]
    pieces = Detokenizer(tokenizer)
    return new_lines([ChatToken(i, pieces.add(i), -rng.expovariate(1.0)) for i in ids], per_line)


def text_validator(lines: list[bytes], request: ChatRequest, tokenizer) -> int:
    """``new_validator`` with each line's text checked against its ids (traffic's reading)."""
    judge, text, kept = ChatLines(request, 10), ChatText(tokenizer), ChatTokens()
    for line in lines:
        kept.add(text.read(judge.read(line)))
    return len(kept)


def old_validator(lines: list[bytes], request: ChatRequest) -> int:
    """Protocol 7's validator: each line parsed into token objects, counted and kept."""
    kept: list[OldToken] = []
    received = 0
    for line in lines:
        chunk = OldChunk.model_validate_json(line)
        received += len(chunk.tokens)
        if received > request.max_tokens:
            raise ValueError("more tokens than asked")
        kept += chunk.tokens
        if chunk.done and chunk.completion_tokens != received:
            raise ValueError("counts differ")
    return len(kept)


def cpu_per_million(work: Callable[[], object], tokens: int, repeats: int) -> float:
    """The fastest of ``repeats`` runs of ``work``, in CPU seconds per million tokens."""
    best = float("inf")
    for _ in range(repeats):
        began = time.process_time()
        work()
        best = min(best, time.process_time() - began)
    return best / tokens * 1e6


def measure(per_line: int, streams: int, repeats: int) -> None:
    total = streams * STREAM_TOKENS
    request = ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": "x"}],
                          max_tokens=STREAM_TOKENS)
    answers = [engine_tokens(STREAM_TOKENS, seed) for seed in range(streams)]
    old_answers = [[OldToken(t.token_id, t.text, t.logprob) for t in a] for a in answers]
    new = [new_lines(a, per_line) for a in answers]
    old = [old_lines(a, per_line) for a in old_answers]
    assert all(new_validator(lines, request) == STREAM_TOKENS for lines in new)
    assert all(old_validator(lines, request) == STREAM_TOKENS for lines in old)
    tokenizer = tiny.chat_tokenizer()
    honest = [honest_lines(tokenizer, seed, per_line) for seed in range(streams)]
    assert all(text_validator(lines, request, tokenizer) == STREAM_TOKENS for lines in honest)
    plain_new = [plain_lines(a, per_line, True) for a in answers]
    plain_old = [plain_lines(a, per_line, False) for a in answers]
    figures = {
        "validator_new": lambda: [new_validator(lines, request) for lines in new],
        "validator_old": lambda: [old_validator(lines, request) for lines in old],
        "validator_new_tiny": lambda: [new_validator(lines, request) for lines in honest],
        "validator_text_tiny": lambda: [text_validator(lines, request, tokenizer)
                                        for lines in honest],
        "validator_floor_new": lambda: [from_json(x) for lines in new for x in lines],
        "validator_floor_old": lambda: [from_json(x) for lines in old for x in lines],
        "miner_new": lambda: [new_lines(a, per_line) for a in answers],
        "miner_old": lambda: [old_lines(a, per_line) for a in old_answers],
        "miner_floor_new": lambda: [to_json(x) for lines in plain_new for x in lines],
        "miner_floor_old": lambda: [to_json(x) for lines in plain_old for x in lines],
    }
    cpu = {name: cpu_per_million(work, total, repeats) for name, work in figures.items()}
    for name, value in cpu.items():
        print(f"{name}_cpu_per_million_tokens_{per_line}_per_line: {value:.3f} s")
    for side in ("validator", "miner"):
        print(f"{side}_new_over_floor_{per_line}_per_line: "
              f"{cpu[f'{side}_new'] / cpu[f'{side}_floor_new']:.2f} ratio")
        print(f"{side}_old_over_new_{per_line}_per_line: "
              f"{cpu[f'{side}_old'] / cpu[f'{side}_new']:.2f} ratio")
    print(f"validator_text_over_new_tiny_{per_line}_per_line: "
          f"{cpu['validator_text_tiny'] / cpu['validator_new_tiny']:.2f} ratio")
    for name, lines in (("new", new), ("old", old)):
        size = sum(len(x) for answer in lines for x in answer)
        print(f"bytes_per_token_{name}_{per_line}_per_line: {size / total:.1f} B", flush=True)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=256_000, help="tokens per figure")
    p.add_argument("--per-line", default="1,10,128", help="tokens a line, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure; the fastest counts")
    p.add_argument("--quick", action="store_true", help="a few thousand tokens, one run (tests)")
    a = p.parse_args()
    if a.quick:
        a.tokens, a.repeats = 2 * STREAM_TOKENS, 1
    streams = max(1, a.tokens // STREAM_TOKENS)
    for per_line in (int(x) for x in a.per_line.split(",")):
        measure(per_line, streams, a.repeats)


if __name__ == "__main__":
    main()
