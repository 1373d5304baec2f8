"""What the validator does after a chat stream's final line (core/validator/dispatch.py, ``drain``):
it reads the answer to its end so the connection is reused, and a miner that keeps the answer open
or writes on after its final line cannot hold the request beyond DRAIN_S. Real HTTP: each miner is
an app served by uvicorn on 127.0.0.1, the validator's real signed client and store."""

from __future__ import annotations

import asyncio
import time

from bittensor.sp_core import Keypair
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from core.metagraph import Neuron
from core.protocol import ChatChunk, ChatRequest, ChatToken
from core.records import Outcome
from core.storage import open_store
from core.transport.client import SignedClient
from core.validator.counting import PromptCounter
from core.validator.dispatch import DRAIN_S
from core.validator.traffic import Attempt, Traffic
from devtools.localproc import free_port
from tests.servers import serving

LINGER_S = 30.0


def chat_miner(after_final: str) -> tuple[FastAPI, set]:
    """A miner that answers one token and its final line with the prompt as ``PromptCounter``
    counts it, then ends the answer after its own bookkeeping (``end``: 20 ms, as the miner's
    turn closes between its last line and the end of its answer), holds it open (``linger``) or
    writes lines on (``chatter``). Returns the app and the set of client addresses it was
    called from."""
    app, peers = FastAPI(), set()
    counter = PromptCounter("tiny")

    @app.post("/chat")
    async def chat(request: Request):
        peers.add(tuple(request.scope["client"]))
        message = ChatRequest.model_validate_json(await request.body())
        final = ChatChunk(done=True, prompt_tokens=counter.prompt_tokens(message),
                          completion_tokens=1)

        async def lines():
            yield ChatChunk.of([ChatToken(token_id=69, text="a", logprob=-1.0)]
                               ).model_dump_json() + "\n"
            yield final.model_dump_json() + "\n"
            if after_final == "end":
                await asyncio.sleep(0.02)
            elif after_final == "linger":
                await asyncio.sleep(LINGER_S)
            elif after_final == "chatter":
                for _ in range(int(LINGER_S / 0.01)):
                    yield '{"tokens": [], "done": true}\n'
                    await asyncio.sleep(0.01)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return app, peers


def send_chats(app: FastAPI, tmp_path, count: int) -> tuple[list, list[float]]:
    """``count`` chat requests one after another through the validator's traffic: their records
    and how long each took."""
    store = open_store(str(tmp_path / "v.sqlite3"))
    port = free_port()
    with serving(app, port) as url:
        miner = Neuron(1, "5miner", "c", 0.0, False, url, 0)

        async def main():
            client = SignedClient(Keypair.create_from_uri("//V"))
            traffic = Traffic(client, PromptCounter("tiny"), store, None)
            records, took = [], []
            for i in range(count):
                chat = ChatRequest(task="chat-llama-3", max_tokens=4,
                                   messages=[{"role": "user", "content": f"hello {i}"}])
                prompt, units = traffic.cost(chat)
                began = time.monotonic()
                result = await traffic.send(Attempt(miner, chat, prompt, units, 1))
                took.append(time.monotonic() - began)
                records.append(result.record)
                assert result.record.units == prompt + 1  # the prompt and the one token
            await client.close()
            return records, took

        out = asyncio.run(main())
    assert [r.outcome for r in store.records(1)] == [Outcome.OK] * count  # one record each
    store.close()
    return out


def test_an_answer_read_to_its_end_leaves_its_connection_for_the_next(tmp_path):
    app, peers = chat_miner("end")
    send_chats(app, tmp_path, 10)
    # ten requests over one kept-alive connection (a machine so loaded that the miner's 20 ms
    # outlast DRAIN_S may cost another; without the drain each request opens its own)
    assert len(peers) <= 3


def test_a_miner_that_keeps_its_answer_open_after_the_final_line_holds_nothing(tmp_path):
    app, peers = chat_miner("linger")
    records, took = send_chats(app, tmp_path, 3)
    # each request ends DRAIN_S after its final line (a lingering answer's connection is
    # dropped, so each request opens another), never LINGER_S later
    assert max(took) < DRAIN_S + 10 < LINGER_S
    assert all(r.outcome is Outcome.OK for r in records)
    assert len(peers) == 3


def test_lines_after_the_final_one_change_nothing(tmp_path):
    app, _ = chat_miner("chatter")
    records, took = send_chats(app, tmp_path, 3)
    assert max(took) < DRAIN_S + 10 < LINGER_S
    assert all(r.outcome is Outcome.OK for r in records)
