"""Faults: an unreachable chain, a locked database, a hanging or garbage-speaking miner, SIGTERM.
The validator records what happened, keeps going, and stops cleanly."""

import asyncio
import signal
import sqlite3
import subprocess
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from core.chain import Neuron
from core.protocol import ChatRequest, TextToImageRequest
from core.records import Outcome
from core.storage import StorageError, open_store
from core.transport.client import SignedClient
from core.validator.counting import PromptCounter
from core.validator.loop import Settings, Validator
from core.validator.traffic import Attempt, Traffic
from devtools.localproc import free_port, lone_validator
from tests.records import record
from tests.servers import serving


def test_the_loop_keeps_running_through_a_chain_outage(tmp_path, make_net, caplog):
    """The node drops the connection on two metagraph reads: bittensor raises its own error,
    the adapter turns it into the project's ChainError, the loop logs a line and retries."""
    net = make_net(block_time=0.2, tempo=5, age_blocks=1000)
    local, wallet = net.local, net.validator("v", stake=1)
    local.fail("runtime_call", "connection", 2)
    store = open_store(str(tmp_path / "v.sqlite3"))
    v = Validator(
        wallet,
        local.chain(),
        store,
        Settings(period_blocks=10, check="off", max_backoff_s=0.5, tokenizers="tiny"),
    )
    asyncio.run(asyncio.wait_for(v.run(periods=1), 60))
    assert store.latest_period() is not None and store.period(store.latest_period()).finished
    assert caplog.text.count("retrying") == 2 and "could not connect" in caplog.text
    assert "Traceback" not in caplog.text  # an expected failure: one line each


def test_a_locked_database_is_a_clear_error_and_nothing_is_half_written(tmp_path):
    path = tmp_path / "v.sqlite3"
    store = open_store(str(path))
    store.db._db.execute("PRAGMA busy_timeout=200")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    from core.budget import Contender

    target = Contender(1, "hk", "inpaint", 10, 10, 0)
    with pytest.raises(StorageError, match=r"v\.sqlite3: OperationalError: database is locked"):
        store.begin_period(3, 30, "0x", 1.0, 0.0, [target])
    other.execute("ROLLBACK")
    assert store.period(3) is None and store.contenders(3) == []  # all of the budgets or none
    store.begin_period(3, 30, "0x", 1.0, 0.0, [target])
    assert store.contenders(3) == [target]


@pytest.fixture
def bad_miner():
    app = FastAPI()

    @app.post("/chat")
    async def hangs(request: Request):
        await request.body()
        await asyncio.sleep(30)

    @app.post("/text-to-image")
    async def garbage(request: Request):
        await request.body()
        return PlainTextResponse("<html>surprise</html>")

    @app.post("/inpaint")
    async def refuses_us(request: Request):
        await request.body()
        return PlainTextResponse("caller is not registered on this subnet", status_code=403)

    port = free_port()
    with serving(app, port) as url:
        yield Neuron(1, "5bad", "c", 0, False, url, 0)


def test_a_hanging_miner_times_out_and_a_garbage_one_is_invalid(bad_miner, tmp_path):
    from bittensor.sp_core import Keypair

    store = open_store(str(tmp_path / "v.sqlite3"))

    async def main():
        client = SignedClient(Keypair.create_from_uri("//V"))
        traffic = Traffic(client, PromptCounter("tiny"), store, None)
        chat = ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": "x"}],
                           max_tokens=1)
        prompt, units = traffic.cost(chat)
        t = time.monotonic()
        hung = await traffic.send(Attempt(bad_miner, chat, prompt, units, 1))
        waited = time.monotonic() - t
        image = TextToImageRequest(task="proteus-text-to-image", prompt="x", steps=1, height=64,
                                   width=64)
        garbled = await traffic.send(Attempt(bad_miner, image, 0, 1, 1))
        await client.close()
        return hung.record, waited, garbled.record

    hung, waited, garbled = asyncio.run(main())
    assert hung.outcome is Outcome.TIMEOUT and 2 < waited < 10
    assert garbled.outcome is Outcome.INVALID
    assert [r.outcome for r in store.records(1)] == [Outcome.TIMEOUT, Outcome.INVALID]


@pytest.mark.process
def test_sigterm_stops_the_validator_cleanly_with_nothing_lost(tmp_path, make_net):
    net = make_net(block_time=1.0, tempo=30, age_blocks=3000)
    chain = net.local
    net.validator("v", stake=1)
    db = str(tmp_path / "v.sqlite3")
    common = ["--network", f"local:{chain.folder}", "--wallet-path", str(tmp_path / "w"),
              "--period-blocks", "30"]
    proc = lone_validator(common, "v", db, "--check", "off", "--tokenizers", "tiny",
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    head = []
    try:
        for line in proc.stdout:  # its period loop logs once the signal handlers are in place
            head.append(line)
            if "period " in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never left running when the stop fails
    out = "".join(head) + rest
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "stopped" in out
    open_store(db).close()  # the database opens cleanly


def test_a_full_disk_is_a_clear_error_and_what_was_written_stays(tmp_path):
    from core.records import RequestRecord

    store = open_store(str(tmp_path / "v.sqlite3"))
    record(store, RequestRecord(1, "hk", "inpaint", False, Outcome.OK, 10, 0.1, 1.0))
    pages = store.db._db.execute("PRAGMA page_count").fetchone()[0]
    store.db._db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own SQLITE_FULL
    with pytest.raises(StorageError, match=r"v\.sqlite3: .*database or disk is full"):
        for i in range(10_000):
            record(store, RequestRecord(1, "hk" * 50, "inpaint", False, Outcome.OK, i, 0.1))
    written = store.records(1)
    assert written[0].units == 10 and len(written) >= 1  # nothing half-written or corrupted
    store.db._db.execute("PRAGMA max_page_count=1073741823")  # space again: writes resume
    record(store, RequestRecord(1, "hk", "inpaint", False, Outcome.OK, 7, 0.1))
    assert store.records(1)[-1].units == 7 and store.db._db.execute(
        "PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_refused_signature_after_an_admitted_capacity_call_fails(bad_miner, tmp_path, caplog):
    from bittensor.sp_core import Keypair

    from core.protocol import InpaintRequest
    from core.records import summarize

    store = open_store(str(tmp_path / "v.sqlite3"))

    async def main():
        client = SignedClient(Keypair.create_from_uri("//V"))
        traffic = Traffic(client, PromptCounter("tiny"), store, None)
        image = InpaintRequest(task="inpaint", prompt="x", steps=4, height=64, width=64,
                               init_image="aGk=", mask_image="aGk=")
        result = await traffic.send(Attempt(bad_miner, image, 0, 4, 1))
        await client.close()
        return result.record

    record = asyncio.run(main())
    assert record.outcome is Outcome.UNAUTHORIZED and record.units == 4
    assert "refused our signed request" in caplog.text and "counted as failed" in caplog.text
    outcome = summarize(store.records(1), declared=100)
    assert outcome.asked == outcome.other.failed == 4  # a refusal: failed, never unscored


def test_a_replica_follower_keeps_following_through_chain_failures(tmp_path, make_net, caplog):
    """A replica that does not hold the loop's lease reads the period's metagraph to serve its
    plan: bittensor's errors on those reads are logged and retried, never the follower's end."""
    from core.budget import Contender
    from core.validator.replica import lead_or_follow

    net = make_net(block_time=0.2, age_blocks=1000)
    local, wallet = net.local, net.validator("v", stake=1)
    store = open_store(str(tmp_path / "v.sqlite3"))
    store.begin_period(3, 900, "0x0", 1.0, 0.0, [Contender(0, "hk", "inpaint", 10, 10, 0)])
    v = Validator(wallet, local.chain(), store,
                  Settings(period_blocks=300, check="off", tokenizers="tiny"))

    class Held:  # the lease is another process's
        def acquire(self):
            return False

    store.lease = lambda name: Held()
    local.fail("runtime_call", "connection", 3)

    async def follow_until_served():
        task = asyncio.create_task(lead_or_follow(v, None, poll_s=0.05))
        while v.book.period != 3:
            assert not task.done(), task
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(asyncio.wait_for(follow_until_served(), 30))
    assert caplog.text.count("cannot follow the period loop's plan") == 3


def test_while_the_store_refuses_records_no_request_is_sent(tmp_path, make_net):
    """Admission follows the store's health: while a record waits in the journal, the loop sends
    no synthetic request and the API refuses organic ones (StoreAway: a fast 503), reserving
    nothing; once the journal is written back both go again, and ``used == Σ records``."""
    from core import plan
    from core.budget import Contender
    from core.metagraph import Metagraph
    from core.records import RequestRecord
    from core.validator.journal import Entry
    from core.validator.organic import Organic, StoreAway
    from tests.flaky_store import used_and_records

    net = make_net(block_time=0.2, age_blocks=1000)
    local, wallet = net.local, net.wallet("v")  # not registered
    store = open_store(str(tmp_path / "v.sqlite3"))
    task = "proteus-text-to-image"
    contender = Contender(0, "5miner", task, 100.0, 100.0, 0)
    store.begin_period(5, 1500, "0x", 1.0, 0.0, [contender])
    v = Validator(wallet, local.chain(), store, Settings(check="off", tokenizers="tiny"))
    graph = Metagraph(1500, (Neuron(0, "5miner", "c", 0.0, False,
                                    f"http://127.0.0.1:{free_port()}", 0),))  # nobody there
    v.book.open(5, [contender], graph, {})
    v.sender.begin()
    assert store.reserve(5, "5miner", task, 10)  # a request whose record the store refused
    v.traffic.recorder.journal.keep(Entry(
        RequestRecord(5, "5miner", task, False, Outcome.OK, 10, 0.5, None, 1.0), 10))
    organic = Organic(v.book, v.traffic)
    image = TextToImageRequest(task=task, prompt="x", steps=10, height=64, width=64)

    async def main():
        await v.sender.send_one(graph, plan.Send(0.0, contender, 10, None), time.time())
        with pytest.raises(StoreAway):
            await organic.image(image)
        refused = store.spent(5)[("5miner", task)][1]
        v.traffic.recorder.flush()  # the store takes the journal back
        await v.sender.send_one(graph, plan.Send(0.0, contender, 10, None), time.time())
        await v.client.close()
        return refused

    assert asyncio.run(main()) == 10  # nothing reserved while refusing: only the journaled one
    records = store.records(5)
    assert [r.outcome for r in records] == [Outcome.OK, Outcome.SERVER_ERROR]
    (used, recorded), = used_and_records(store, 5).values()
    assert used == recorded == 20
