"""A synthetic chat answer read in pauses (core/validator/dispatch.py ``pause``, docs/protocol.md
§5): the validator wakes a few times per answer instead of at every line, an answer at the
expected pace is seen to end when it ends, one that holds its tokens back and sends them at once
is seen at most PAUSE_MAX_S late, and a silence still counts as a stall from the last read. Real
HTTP: the miner is an app served by uvicorn on 127.0.0.1, the validator's real signed client and
store."""

from __future__ import annotations

import asyncio
import time

import pytest
from bittensor.sp_core import Keypair
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from core.metagraph import Neuron
from core.protocol import ChatChunk, ChatRequest, ChatToken
from core.records import Outcome
from core.storage import open_store
from core.tasks import TASKS
from core.transport.client import SignedClient
from core.validator import dispatch
from core.validator.counting import PromptCounter
from core.validator.traffic import Attempt, Traffic
from devtools.localproc import free_port
from tests.servers import serving

TASK = "chat-llama-3"
TOKENS = 100
LINE_S = 0.05  # the miner writes a line this often (its LINE_INTERVAL_S is 0.2)
PACE = TASKS[TASK].seconds_per_unit  # the expected pace: 100 tokens in 2 s


def paced_miner(mode: str) -> tuple[FastAPI, dict]:
    """A miner that streams TOKENS tokens ``steady`` (at the expected pace, a line every
    LINE_S), ``burst`` (5 tokens, then nothing for a second, then the rest at once) or
    ``stall`` (5 tokens, then silence for 3 s). Returns the app and what it saw: the lines it
    wrote and the perf_counter time of its final line."""
    app, seen = FastAPI(), {"lines": 0, "final_at": None}
    counter = PromptCounter("tiny")
    token = ChatToken(token_id=69, text="a", logprob=-1.0)  # the tiny tokenizer's "a"

    def line(n: int) -> str:
        seen["lines"] += 1
        return ChatChunk.of([token] * n).model_dump_json() + "\n"

    @app.post("/chat")
    async def chat(request: Request):
        message = ChatRequest.model_validate_json(await request.body())
        final = ChatChunk(done=True, prompt_tokens=counter.prompt_tokens(message),
                          completion_tokens=TOKENS)

        async def lines():
            began, sent = time.perf_counter(), 0
            if mode == "steady":
                while sent < TOKENS:
                    await asyncio.sleep(LINE_S)
                    due = min(TOKENS, int((time.perf_counter() - began) / PACE))
                    if due > sent:
                        yield line(due - sent)
                        sent = due
            else:
                yield line(5)
                await asyncio.sleep(1.0 if mode == "burst" else 3.0)
                yield line(TOKENS - 5)
            seen["final_at"] = time.perf_counter()
            yield final.model_dump_json() + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return app, seen


def send(app: FastAPI, tmp_path, message: ChatRequest, monkeypatch) -> tuple:
    """One request through the validator's traffic: its record, the perf_counter time at which
    the validator took the answer to have ended (its start plus the recorded latency), and the
    reads it made of the answer."""
    reads = [0]
    feed = dispatch.ChatAnswer.feed

    def counted(self, block):
        reads[0] += 1
        return feed(self, block)

    monkeypatch.setattr(dispatch.ChatAnswer, "feed", counted)
    store = open_store(str(tmp_path / "v.sqlite3"))
    with serving(app, free_port()) as url:
        miner = Neuron(1, "5miner", "c", 0.0, False, url, 0)

        async def main():
            client = SignedClient(Keypair.create_from_uri("//V"))
            traffic = Traffic(client, PromptCounter("tiny"), store, None)
            prompt, units = traffic.cost(message)
            try:
                began = time.perf_counter()
                result = await traffic.send(Attempt(miner, message, prompt, units, 1))
                return result.record, began + result.record.latency_s
            finally:
                await client.close()

        record, ended = asyncio.run(main())
    store.close()
    return record, ended, reads[0]


def synthetic(min_tokens: int = TOKENS) -> ChatRequest:
    return ChatRequest(task=TASK, max_tokens=TOKENS, min_tokens=min_tokens,
                       messages=[{"role": "user", "content": "hello"}])


def test_an_answer_at_the_expected_pace_is_read_in_a_few_wakes_and_seen_to_end_when_it_ends(
        tmp_path, monkeypatch):
    app, seen = paced_miner("steady")
    record, ended, reads = send(app, tmp_path, synthetic(), monkeypatch)
    assert record.outcome is Outcome.OK and record.units > TOKENS
    assert seen["lines"] >= 30  # 2 s of lines every 50 ms
    # line by line it would be a read a line; a busy machine only makes reads rarer (more
    # lines wait in the buffer), never more frequent
    assert reads <= seen["lines"] // 2
    # the last pause ends before the final line can come at this pace: the end is seen as it
    # comes (0.5 s: a loaded machine's delay, far under what a pause could add, PAUSE_MAX_S)
    assert ended - seen["final_at"] < 0.5


def test_an_answer_that_holds_its_tokens_back_is_seen_at_most_a_pause_late(tmp_path, monkeypatch):
    app, seen = paced_miner("burst")
    record, ended, reads = send(app, tmp_path, synthetic(), monkeypatch)
    assert record.outcome is Outcome.OK
    assert seen["final_at"] < ended < seen["final_at"] + dispatch.PAUSE_MAX_S + 0.5


def test_an_answer_that_may_end_at_any_time_is_read_line_by_line(tmp_path, monkeypatch):
    """No ``min_tokens`` (a request with stop sequences): nothing bounds when it ends, so the
    reader never pauses and the burst is seen as it comes."""
    app, seen = paced_miner("burst")
    record, ended, reads = send(app, tmp_path, synthetic(min_tokens=0), monkeypatch)
    assert record.outcome is Outcome.OK
    assert ended - seen["final_at"] < 0.5


def test_a_silence_through_a_pause_is_a_stall_from_the_last_read(tmp_path, monkeypatch):
    monkeypatch.setattr(dispatch, "CHAT_STALL_S", 0.5)  # less than the first pause (~1 s)
    app, _ = paced_miner("stall")
    record, _, _ = send(app, tmp_path, synthetic(), monkeypatch)
    assert record.outcome is Outcome.TIMEOUT


@pytest.mark.parametrize("tokens, min_tokens, expected", [
    (0, 100, 0.0),  # before the first tokens: the time to the first is not bounded
    (5, 0, 0.0),  # stop sequences: it may end at any time
    (100, 100, 0.0),
    (5, 100, 0.5 * 95 * PACE),
    (5, 1000, dispatch.PAUSE_MAX_S),
    (98, 100, 0.0),  # 20 ms: not worth a timer
])
def test_the_pause_is_half_the_rest_at_the_expected_pace_within_its_bounds(
        tokens, min_tokens, expected):
    message = ChatRequest(task=TASK, max_tokens=max(min_tokens, 100), min_tokens=min_tokens,
                          messages=[{"role": "user", "content": "hello"}])
    assert dispatch.pause(message, tokens) == pytest.approx(expected)
