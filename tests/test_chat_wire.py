"""A miner that lies in protocol 8's chat lines (columns of ids, log-probabilities and text
lengths, the text once) fails the request: the validator's real signed client reads each line
within MAX_CHAT_LINE_BYTES from a miner served by uvicorn on 127.0.0.1, and judges it as the
validator does (``core.validator.dispatch.chat_chunks``; a failure's outcome as traffic records
it)."""

from __future__ import annotations

import asyncio
import json

import pytest
from bittensor.sp_core import Keypair
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from core.metagraph import Neuron
from core.protocol import MAX_CHAT_LINE_BYTES, MAX_COUNT, MAX_TOKEN_TEXT, ChatRequest
from core.records import Outcome
from core.transport.client import SignedClient
from core.validator.counting import PromptCounter
from core.validator.dispatch import chat_chunks, failure_outcome
from devtools.localproc import free_port
from tests.servers import serving

ASKED = 2  # tokens each request asks for
HONEST = {"ids": [7, 8], "logprobs": [-0.5, -1.25], "text": "aü", "lengths": [1, 1]}


def lines_of(mode: str, prompt: int) -> list[str]:
    """The answer a miner in ``mode`` writes: honest but for the one lie ``mode`` names."""
    tokens, final = dict(HONEST), {"done": True, "prompt_tokens": prompt, "completion_tokens": 2}
    raw: str | None = None  # a token line that JSON cannot say as a dict
    if mode == "short-logprobs":
        tokens["logprobs"] = [-0.5]
    elif mode == "long-lengths":
        tokens["lengths"] = [1, 1, 0]
    elif mode == "lengths-over-text":
        tokens["lengths"] = [1, 2]
    elif mode == "lengths-under-text":
        tokens["text"] = "aüx"
    elif mode == "nan-logprob":
        raw = json.dumps(tokens).replace("-1.25", "NaN")
    elif mode == "infinite-logprob":
        raw = json.dumps(tokens).replace("-1.25", "-Infinity")
    elif mode == "positive-logprob":
        tokens["logprobs"] = [-0.5, 0.5]
    elif mode == "negative-id":
        tokens["ids"] = [7, -1]
    elif mode == "huge-id":
        tokens["ids"] = [7, MAX_COUNT]
    elif mode == "fractional-id":
        tokens["ids"] = [7, 8.5]
    elif mode == "long-token-text":
        tokens["text"] = "a" * (MAX_TOKEN_TEXT + 1) + "ü"
        tokens["lengths"] = [MAX_TOKEN_TEXT + 1, 1]
    elif mode == "lone-surrogate":
        raw = json.dumps(tokens).replace("\\u00fc", "\\udcff")
    elif mode == "oversize-line":  # valid JSON, but longer than a validator reads
        raw = json.dumps(tokens) + " " * MAX_CHAT_LINE_BYTES
    elif mode == "protocol-7-line":
        raw = json.dumps({"tokens": [{"token_id": 7, "text": "a", "logprob": -0.5},
                                     {"token_id": 8, "text": "ü", "logprob": -1.25}]})
    elif mode == "more-than-asked":
        tokens = {"ids": [7, 8, 9], "logprobs": [-0.5, -1.25, -2.0], "text": "aüb",
                  "lengths": [1, 1, 1]}
        final["completion_tokens"] = 3
    elif mode == "completion-count-lie":
        final["completion_tokens"] = 3
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
        "more-than-asked", "completion-count-lie", "prompt-count-lie", "no-final-line"]


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


def judged(miner: Neuron, mode: str) -> tuple[Outcome, list]:
    """How the validator ends the request, and the chunks it accepted before."""
    message = ChatRequest(task="chat-llama-3", max_tokens=ASKED,
                          messages=[{"role": "user", "content": mode}])

    async def read():
        client, chunks = SignedClient(Keypair.create_from_uri("//V")), []
        try:
            async for chunk in chat_chunks(client, miner, message,
                                           PromptCounter("tiny").prompt_tokens(message)):
                chunks.append(chunk)
                if chunk.done:
                    return Outcome.OK, chunks
            raise AssertionError("chat_chunks ended without a final line or a failure")
        except Exception as e:
            return failure_outcome(e), chunks
        finally:
            await client.close()

    return asyncio.run(read())


def test_an_honest_answer_is_read_token_by_token(miner):
    outcome, chunks = judged(miner, "honest")
    assert outcome is Outcome.OK
    assert [(t.token_id, t.text, t.logprob) for t in chunks[0].tokens] == [(7, "a", -0.5),
                                                                         (8, "ü", -1.25)]


@pytest.mark.parametrize("mode", LIES)
def test_a_miner_that_lies_in_its_chat_lines_fails_the_request(miner, mode):
    outcome, chunks = judged(miner, mode)
    assert outcome is Outcome.INVALID, mode
    assert not any(c.done for c in chunks)  # nothing it said was taken as an answer
