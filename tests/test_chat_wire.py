"""A miner that lies in protocol 8's chat lines (columns of ids, log-probabilities and text
lengths, the text once) fails the request: the validator's real signed client reads each line
within MAX_CHAT_LINE_BYTES from a miner served by uvicorn on 127.0.0.1, and judges it as the
validator does (``core.validator.dispatch.ChatAnswer``: each line judged and its text checked
against its ids, ``dispatch.ChatText``; a failure's outcome as traffic records it)."""

from __future__ import annotations

import asyncio
import json

import pytest
from bittensor.sp_core import Keypair
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from core.metagraph import Neuron
from core.protocol import (
    MAX_CHAT_LINE_BYTES,
    MAX_COUNT,
    MAX_TOKEN_TEXT,
    ChatChunk,
    ChatRequest,
    ChatTokens,
)
from core.records import Outcome
from core.transport.client import SignedClient
from core.validator.counting import PromptCounter
from core.validator.dispatch import ChatAnswer, chat_answer, failure_outcome
from devtools.localproc import free_port
from tests.servers import serving

ASKED = 3  # tokens each request asks for
A, U1, U2 = 69, 132, 125  # the tiny tokenizer's "a", and the two bytes of "ü" (UTF-8 c3 bc)
# the engine's text: "ü" is held back on its first byte (an incomplete character)
HONEST = {"ids": [A, U1, U2], "logprobs": [-0.5, -1.25, -0.75], "text": "aü",
          "lengths": [1, 0, 1]}
FORGED = "Send your seed phrase to evil.example"


def lines_of(mode: str, prompt: int) -> list[str]:
    """The answer a miner in ``mode`` writes: honest but for the one lie ``mode`` names."""
    tokens, final = dict(HONEST), {"done": True, "prompt_tokens": prompt, "completion_tokens": 3}
    raw: str | None = None  # a token line that JSON cannot say as a dict
    if mode == "short-logprobs":
        tokens["logprobs"] = [-0.5]
    elif mode == "long-lengths":
        tokens["lengths"] = [1, 0, 1, 0]
    elif mode == "lengths-over-text":
        tokens["lengths"] = [1, 0, 2]
    elif mode == "lengths-under-text":
        tokens["text"] = "aüx"
    elif mode == "nan-logprob":
        raw = json.dumps(tokens).replace("-1.25", "NaN")
    elif mode == "infinite-logprob":
        raw = json.dumps(tokens).replace("-1.25", "-Infinity")
    elif mode == "positive-logprob":
        tokens["logprobs"] = [-0.5, 0.5, -0.75]
    elif mode == "negative-id":
        tokens["ids"] = [A, -1, U2]
    elif mode == "huge-id":
        tokens["ids"] = [A, MAX_COUNT, U2]
    elif mode == "fractional-id":
        tokens["ids"] = [A, 8.5, U2]
    elif mode == "long-token-text":
        tokens["text"] = "a" * (MAX_TOKEN_TEXT + 1) + "ü"
        tokens["lengths"] = [MAX_TOKEN_TEXT + 1, 0, 1]
    elif mode == "forged-text":  # honest ids and logprobs, another text (the relay's attack)
        tokens["text"], tokens["lengths"] = FORGED, [len(FORGED), 0, 0]
    elif mode == "text-ahead-of-ids":  # "ü" before the byte that completes it
        tokens["text"], tokens["lengths"] = "aü", [1, 1, 0]
        tokens = {k: v[:2] if isinstance(v, list) else v for k, v in tokens.items()}
        final["completion_tokens"] = 2
    elif mode == "text-held-back":  # "a" left out: an engine holds back incomplete text only
        tokens["text"], tokens["lengths"] = "ü", [0, 0, 1]
    elif mode == "another-character":  # the same ids, a look-alike text
        tokens["text"] = "aü".replace("ü", "u")
    elif mode == "stop-cut-short":  # the text a stop sequence would end early: cut
        tokens["text"], tokens["lengths"] = "a", [1, 0, 0]
    elif mode == "lone-surrogate":
        raw = json.dumps(tokens).replace("\\u00fc", "\\udcff")
    elif mode == "oversize-line":  # valid JSON, but longer than a validator reads
        raw = json.dumps(tokens) + " " * MAX_CHAT_LINE_BYTES
    elif mode == "protocol-7-line":
        raw = json.dumps({"tokens": [{"token_id": 7, "text": "a", "logprob": -0.5},
                                     {"token_id": 8, "text": "ü", "logprob": -1.25}]})
    elif mode == "more-than-asked":
        tokens = {"ids": [A, U1, U2, A], "logprobs": [-0.5, -1.25, -0.75, -2.0],
                  "text": "aüa", "lengths": [1, 0, 1, 1]}
        final["completion_tokens"] = 4
    elif mode == "completion-count-lie":
        final["completion_tokens"] = 4
    elif mode == "prompt-count-lie":
        final["prompt_tokens"] = prompt + 1
    elif mode == "no-final-line":
        return [json.dumps(tokens)]
    else:
        assert mode == "honest", mode
    return [raw or json.dumps(tokens), json.dumps(final)]


LIES = ["short-logprobs", "long-lengths", "lengths-over-text", "lengths-under-text",
        "nan-logprob", "infinite-logprob", "positive-logprob", "negative-id", "huge-id",
        "fractional-id", "long-token-text", "lone-surrogate", "oversize-line", "protocol-7-line",
        "more-than-asked", "completion-count-lie", "prompt-count-lie", "no-final-line",
        "forged-text", "text-ahead-of-ids", "text-held-back", "another-character",
        "stop-cut-short"]


@pytest.fixture(scope="module")
def miner():
    """A miner whose answer lies as the request's message names."""
    app, counter = FastAPI(), PromptCounter("tiny")

    @app.post("/chat")
    async def chat(request: Request):
        message = ChatRequest.model_validate_json(await request.body())
        lines = lines_of(message.messages[0].content, counter.prompt_tokens(message))
        return StreamingResponse((line + "\n" for line in lines),
                                 media_type="application/x-ndjson")

    with serving(app, free_port()) as url:
        yield Neuron(1, "5miner", "c", 0.0, False, url, 0)


def judged(miner: Neuron, mode: str) -> tuple[Outcome, ChatTokens, ChatChunk | None]:
    """How the validator ends the request, the tokens it accepted before, and the final line
    it took."""
    message = ChatRequest(task="chat-llama-3", max_tokens=ASKED,
                          messages=[{"role": "user", "content": mode}])

    async def read():
        client, counter, tokens = SignedClient(Keypair.create_from_uri("//V")), \
            PromptCounter("tiny"), ChatTokens()
        answer = ChatAnswer(message, counter.prompt_tokens(message),
                            counter.tokenizer(message.task), tokens)
        try:
            async with chat_answer(client, miner, message) as body:
                while answer.final is None:
                    block = await body.readany()
                    if block:
                        answer.feed(block)
                    else:
                        answer.end()
            return Outcome.OK, tokens, answer.final
        except Exception as e:
            return failure_outcome(e), tokens, answer.final
        finally:
            await client.close()

    return asyncio.run(read())


def test_an_honest_answer_is_read_token_by_token(miner):
    outcome, tokens, final = judged(miner, "honest")
    assert outcome is Outcome.OK and final is not None
    assert [(t.token_id, t.text, t.logprob) for t in tokens] == [
        (A, "a", -0.5), (U1, "", -1.25), (U2, "ü", -0.75)]


@pytest.mark.parametrize("mode", LIES)
def test_a_miner_that_lies_in_its_chat_lines_fails_the_request(miner, mode):
    outcome, _, final = judged(miner, mode)
    assert outcome is Outcome.INVALID, mode
    assert final is None  # nothing it said was taken as an answer
