"""A synthetic chat answer read in pauses (core/validator/dispatch.py ``pause``, docs/protocol.md
§5): the validator wakes a few times per answer instead of at every line, an answer at the
expected pace is seen to end when it ends, one that holds its tokens back and sends them at once
is seen at most PAUSE_MAX_S late, and a silence still counts as a stall from the last read. Real
HTTP: the miner is an app served by uvicorn on 127.0.0.1, the validator's real signed client and
store."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from bittensor.sp_core import Keypair
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from core.metagraph import Neuron
from core.protocol import MAX_CHAT_LINE_BYTES, ChatChunk, ChatRequest, ChatToken, ChatTokens
from core.records import Outcome
from core.storage import open_store
from core.tasks import TASKS
from core.transport.client import SignedClient
from core.validator import dispatch
from core.validator.counting import PromptCounter
from core.validator.traffic import Attempt, Result, Traffic
from devtools.localproc import free_port
from tests.servers import serving

TASK = "chat-llama-3"
TOKENS = 100
LINE_S = 0.05  # the miner writes a line this often (its LINE_INTERVAL_S is 0.2)
PACE = TASKS[TASK].seconds_per_unit  # the expected pace: 100 tokens in 2 s


PROMPT = 8  # "hello" as the tiny tokenizer counts it with the chat template
EXPECTED_S = TASKS[TASK].expected_seconds(PROMPT + TOKENS)  # 2.66 s: the speed factor's 1


def paced_miner(mode: str) -> tuple[FastAPI, dict]:
    """A miner that streams TOKENS tokens ``steady`` (at the expected pace, a line every
    LINE_S), ``burst`` (5 tokens, then nothing for a second, then the rest at once), ``stall``
    (5 tokens, then silence for 3 s), ``keepalive`` (5 tokens, then a blank line every 0.2 s
    for 2 s, then the rest), ``late-fast`` (nothing until 0.1 s past the expected time, then
    every token at five times the pace), ``trickle`` (5 tokens every 0.1 s, the final line 0.1 s
    after the last) or ``lie`` (45 tokens within 0.1 s, then a final line that claims 100).
    Returns the app and what it saw: the lines it wrote, the tokens it sent and the
    perf_counter time of its final line."""
    app, seen = FastAPI(), {"lines": 0, "sent": 0, "final_at": None}
    counter = PromptCounter("tiny")
    token = ChatToken(token_id=69, text="a", logprob=-1.0)  # the tiny tokenizer's "a"

    def line(n: int) -> str:
        seen["lines"] += 1
        seen["sent"] += n
        return ChatChunk.of([token] * n).model_dump_json() + "\n"

    @app.post("/chat")
    async def chat(request: Request):
        message = ChatRequest.model_validate_json(await request.body())
        final = ChatChunk(done=True, prompt_tokens=counter.prompt_tokens(message),
                          completion_tokens=TOKENS)

        async def paced(pace: float):
            began, sent = time.perf_counter(), seen["sent"]
            while seen["sent"] < TOKENS:
                await asyncio.sleep(LINE_S)
                due = min(TOKENS, sent + int((time.perf_counter() - began) / pace))
                if due > seen["sent"]:
                    yield line(due - seen["sent"])

        async def lines():
            if mode == "steady":
                async for x in paced(PACE):
                    yield x
            elif mode == "late-fast":
                await asyncio.sleep(EXPECTED_S + 0.1)
                async for x in paced(PACE / 5):
                    yield x
            elif mode == "lie":  # 45 tokens, then a final line that claims 100
                yield line(5)
                await asyncio.sleep(0.1)
                yield line(40)
            elif mode == "trickle":
                while seen["sent"] < TOKENS:
                    yield line(5)
                    await asyncio.sleep(0.1)
            else:
                yield line(5)
                if mode == "keepalive":
                    for _ in range(10):
                        await asyncio.sleep(0.2)
                        yield "\n"
                else:
                    await asyncio.sleep(1.0 if mode == "burst" else 3.0)
                yield line(TOKENS - 5)
            seen["final_at"] = time.perf_counter()
            yield final.model_dump_json() + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return app, seen


def through_traffic(app: FastAPI, tmp_path, go):
    """``go(traffic, miner)`` run against ``app`` served by uvicorn on 127.0.0.1, through the
    validator's real signed client, the tiny tokenizer's counter and a SQLite store; its result."""
    store = open_store(str(tmp_path / "v.sqlite3"))
    with serving(app, free_port()) as url:
        miner = Neuron(1, "5miner", "c", 0.0, False, url, 0)

        async def main():
            client = SignedClient(Keypair.create_from_uri("//V"))
            try:
                return await go(Traffic(client, PromptCounter("tiny"), store, None), miner)
            finally:
                await client.close()

        out = asyncio.run(main())
    store.close()
    return out


def send(app: FastAPI, tmp_path, message: ChatRequest, monkeypatch,
         cancel_after: float | None = None, seen: dict | None = None) -> tuple:
    """One request through the validator's traffic: its record, the perf_counter time at which
    the validator took the answer to have ended (its start plus the recorded latency), and the
    reads it made of the answer. With ``cancel_after``, the request is cancelled then (as a
    window's end cancels it), and the tokens the miner had sent by then are returned too."""
    reads = [0]
    feed = dispatch.ChatAnswer.feed

    def counted(self, block):
        reads[0] += 1
        return feed(self, block)

    monkeypatch.setattr(dispatch.ChatAnswer, "feed", counted)

    async def go(traffic: Traffic, miner: Neuron):
        prompt, units = traffic.cost(message)
        assert prompt == PROMPT
        began = time.perf_counter()
        sending = asyncio.create_task(traffic.send(Attempt(miner, message, prompt, units, 1)))
        if cancel_after is None:
            result = await sending
            return result.record, began + result.record.latency_s, None
        await asyncio.sleep(cancel_after)
        sent = seen["sent"] if seen else None
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        return traffic.store.records(1)[0], None, sent

    record, ended, sent = through_traffic(app, tmp_path, go)
    return (record, ended, reads[0]) if cancel_after is None else (record, sent)


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


def test_blank_lines_do_not_keep_a_stalled_answer_alive(tmp_path, monkeypatch):
    """Only tokens end a silence: a miner that sends blank lines (or a line's bytes a few at a
    time) while it serves nothing has stalled all the same."""
    monkeypatch.setattr(dispatch, "CHAT_STALL_S", 0.5)
    app, _ = paced_miner("keepalive")  # a blank line every 0.2 s for 2 s, all before the
    #                                    expected time: the reader pauses (~0.95 s) throughout
    record, _, _ = send(app, tmp_path, synthetic(), monkeypatch)
    assert record.outcome is Outcome.TIMEOUT


def test_an_answer_late_then_fast_is_read_line_by_line_past_its_expected_time(
        tmp_path, monkeypatch):
    """Past the request's expected time, where every moment costs speed, the reader never
    pauses: a miner behind schedule that then decodes fast is seen to end as it ends."""
    app, seen = paced_miner("late-fast")
    record, ended, _ = send(app, tmp_path, synthetic(), monkeypatch)
    assert record.outcome is Outcome.OK
    assert seen["final_at"] > EXPECTED_S  # it was behind schedule
    assert ended - seen["final_at"] < 0.3  # a pause would have cost it up to 0.9 s


def test_a_request_cut_off_during_a_pause_records_what_had_come(tmp_path, monkeypatch):
    """Cancelled (a window's end) while the reader paused, the request is abandoned with the
    tokens that had come by then, read from the connection's buffer as it is cut off."""
    app, seen = paced_miner("trickle")  # 5 tokens every 0.1 s
    record, sent = send(app, tmp_path, synthetic(), monkeypatch, cancel_after=0.6, seen=seen)
    assert record.outcome is Outcome.ABANDONED
    assert sent >= 15  # the reader had read the first 5 and paused ~0.95 s
    assert record.units - PROMPT >= sent - 5  # all but a line still on its way


def test_a_lie_that_came_before_a_cut_off_is_the_miners_failure(tmp_path, monkeypatch):
    """Cut off while the reader paused, with a lying final line in the buffer: the request is
    invalid, as a reader line by line would have found, not abandoned with its tokens paid."""
    app, _ = paced_miner("lie")
    record, _ = send(app, tmp_path, synthetic(), monkeypatch, cancel_after=0.5)
    assert record.outcome is Outcome.INVALID


def test_a_relays_slow_client_is_never_the_miners_stall(tmp_path, monkeypatch):
    """The organic API's client holding the stream (longer than the stall) is the client's
    time: the miner's final line, which came meanwhile, is read and the answer is ok."""
    monkeypatch.setattr(dispatch, "CHAT_STALL_S", 0.5)
    app, _ = paced_miner("trickle")

    async def go(traffic: Traffic, miner: Neuron):
        message = synthetic(min_tokens=0)
        prompt, units = traffic.cost(message)
        result, held = Result(), False
        async with contextlib.aclosing(traffic.chat(
                Attempt(miner, message, prompt, units, 1, organic=True), result)) as relayed:
            async for _ in relayed:
                if len(result.tokens) == TOKENS and not held:
                    held = True
                    await asyncio.sleep(1.0)  # a slow client, twice the stall
        return result.record

    record = through_traffic(app, tmp_path, go)
    assert record.outcome is Outcome.OK


def test_nothing_after_the_final_line_is_judged_in_the_block_that_brings_it():
    counter = PromptCounter("tiny")
    message = synthetic(min_tokens=0)
    tokens = ChatTokens()
    answer = dispatch.ChatAnswer(message, PROMPT, counter.tokenizer(TASK), tokens)
    token = ChatChunk.of([ChatToken(token_id=69, text="a", logprob=-1.0)])
    final = ChatChunk(done=True, prompt_tokens=PROMPT, completion_tokens=1)
    block = b"\n".join([token.model_dump_json().encode(), final.model_dump_json().encode(),
                        b"x" * (MAX_CHAT_LINE_BYTES + 1), b""])
    assert answer.feed(block)
    assert answer.final == final and len(tokens) == 1


@pytest.mark.parametrize("tokens, min_tokens, until_expected, expected", [
    (0, 100, 10.0, 0.0),  # before the first tokens: the time to the first is not bounded
    (5, 0, 10.0, 0.0),  # stop sequences: it may end at any time
    (100, 100, 10.0, 0.0),
    (5, 100, 10.0, 0.5 * 95 * PACE),
    (5, 1000, 10.0, dispatch.PAUSE_MAX_S),
    (98, 100, 10.0, 0.0),  # 20 ms: not worth a timer
    (5, 1000, 0.3, 0.3),  # never past the expected time
    (5, 1000, -1.0, 0.0),  # past it: line by line
])
def test_the_pause_is_half_the_rest_at_the_expected_pace_within_its_bounds(
        tokens, min_tokens, until_expected, expected):
    message = ChatRequest(task=TASK, max_tokens=max(min_tokens, 100), min_tokens=min_tokens,
                          messages=[{"role": "user", "content": "hello"}])
    assert dispatch.pause(message, tokens, until_expected) == pytest.approx(expected)
