"""A miner reads what a validator measured of it, signed with its own hotkey; never another's."""

from __future__ import annotations

import pytest
from bittensor import http_auth
from fastapi.testclient import TestClient

from core.budget import Contender
from core.feedback import FEEDBACK_PATH, Feedback, FeedbackRequest
from core.metagraph import Metagraph, Neuron
from core.records import Outcome, RequestRecord
from core.scoring import ContenderState
from core.storage import AsyncStore, open_store
from core.validator.feedback import feedback_for
from core.validator.metrics import ValidatorMetrics
from core.validator.peer import PeerServices, build_peer_app
from devtools.localproc import make_wallet
from tests.records import record


def test_a_miner_reads_its_own_rows_only_and_signed(tmp_path):
    wallets = tmp_path / "w"
    me, alice, bob, stranger = (make_wallet(wallets, n).hotkey
                                for n in ("validator", "alice", "bob", "stranger"))
    store = open_store(str(tmp_path / "v.sqlite3"))
    targets = [Contender(1, alice.ss58_address, "chat-llama-3", 1000, 1000, 0),
               Contender(2, bob.ss58_address, "inpaint", 40, 40, 0)]
    store.begin_period(3, 900, "0x1", 1.0, 0.0, targets)
    store.finish_period(3, {
        (alice.ss58_address, "chat-llama-3"): ContenderState(
            declared=1000, demonstrated=600, credited=600, reliability=0.81, quality=0.9,
            scored=((50.0, 0.81),)),
        (bob.ss58_address, "inpaint"): ContenderState(declared=40, demonstrated=40, credited=40,
                                                      reliability=1.0)})
    for outcome, quality in ((Outcome.OK, 1.0), (Outcome.OK, 0.0), (Outcome.TIMEOUT, 0.0)):
        record_id = record(store, RequestRecord(3, alice.ss58_address, "chat-llama-3", False,
                                               outcome, 100.0, 1.0, quality, 0.0))
    store.set_quality(record_id - 1, 0.0, "reported logprobs differ from the model's")
    record(store, RequestRecord(3, bob.ss58_address, "inpaint", False, Outcome.OK, 20.0, 1.0,
                               1.0, 0.0))
    graph = Metagraph(60, (Neuron(0, me.ss58_address, "c", 10.0, True, None, 0),
                           Neuron(1, alice.ss58_address, "c", 0.0, False, None, 0),
                           Neuron(2, bob.ss58_address, "c", 0.0, False, None, 0)))

    services = PeerServices(me.ss58_address, lambda: graph, ValidatorMetrics(), None,
                            AsyncStore(store))
    client = TestClient(build_peer_app(services))

    def ask(signer, receiver=me.ss58_address, body=None, headers=None):
        body = body or FeedbackRequest().model_dump_json().encode()
        if headers is None:
            headers = http_auth.sign(signer, method="POST", path=FEEDBACK_PATH, body=body,
                                     receiver_ss58=receiver) if signer else {}
        return client.post(FEEDBACK_PATH, content=body, headers=headers), headers

    assert ask(None)[0].status_code == 401
    assert ask(stranger)[0].status_code == 403  # not registered
    assert ask(alice, receiver=bob.ss58_address)[0].status_code == 401  # for another receiver
    answer, headers = ask(alice)
    assert answer.status_code == 200
    mine = Feedback.model_validate_json(answer.content)
    assert mine.hotkey == alice.ss58_address and [t.task for t in mine.tasks] == ["chat-llama-3"]
    row = mine.tasks[0]
    assert (row.credited, row.reliability, row.outcomes) == (600, 0.81, {"ok": 2, "timeout": 1})
    assert row.scored_zero == 1 and row.windows[0].score == 0.81
    assert row.effective == 600 * 0.81 * 0.9 ** 3
    assert any("600 of the 1000 declared" in n for n in row.notes)
    assert "1 checks failed: reported logprobs differ from the model's" in row.notes
    assert bob.ss58_address not in answer.text and "inpaint" not in answer.text
    assert ask(alice, headers=headers)[0].status_code == 401  # the same signed request again
    assert ask(alice)[0].status_code == 429  # sooner than FEEDBACK_INTERVAL_S
    theirs = Feedback.model_validate_json(ask(bob)[0].content)
    assert [t.task for t in theirs.tasks] == ["inpaint"] and alice.ss58_address not in str(theirs)


def test_feedback_shows_the_scored_periods_cancels_and_timeouts_not_the_running_ones(tmp_path):
    """Period 3 is closed with requests cancelled at its end and timed out; period 4 has begun
    and so far answered everything: the feedback's outcomes are period 3's, with their reasons,
    and period 4's are shown apart, as running."""
    store = open_store(str(tmp_path / "v.sqlite3"))
    me, other = "5Miner", "5Other"
    contenders = [Contender(1, me, "chat-llama-3", 1000, 1000, 0),
                  Contender(2, other, "chat-llama-3", 1000, 1000, 0)]
    store.begin_period(3, 900, "0x1", 1.0, 0.0, contenders)
    ended = [Outcome.OK] * 2 + [Outcome.ABANDONED] * 21 + [Outcome.TIMEOUT] * 3
    for outcome in ended:
        record(store, RequestRecord(3, me, "chat-llama-3", False, outcome, 100.0, 1.0, None, 0.0))
    record(store, RequestRecord(3, other, "chat-llama-3", False, Outcome.SERVER_ERROR, 100.0, 1.0))
    store.finish_period(3, {(me, "chat-llama-3"): ContenderState(
        declared=1000, demonstrated=700, credited=700, reliability=0.9)})
    store.begin_period(4, 1200, "0x2", 1.0, 0.0, contenders)
    for _ in range(2):
        record(store, RequestRecord(4, me, "chat-llama-3", False, Outcome.OK, 100.0, 1.0))

    answer = feedback_for(store, "5Validator", me)
    assert (answer.period, answer.running) == (3, 4)
    row = answer.tasks[0]
    assert row.outcomes == {"ok": 2, "abandoned": 21, "timeout": 3}
    assert row.running == {"ok": 2}
    cancelled = next(n for n in row.notes if n.startswith("21 abandoned in period 3"))
    assert "stopped waiting" in cancelled and "not scored" in cancelled
    assert any(n.startswith("3 timeout in period 3: answered after") for n in row.notes)
    assert "5xx" not in str(answer)  # the other miner's failure is not this one's

    store.finish_period(4, {(me, "chat-llama-3"): ContenderState(declared=1000)})
    closed = feedback_for(store, "5Validator", me)  # period 4 closed: it is the scored one
    assert (closed.period, closed.running) == (4, None)
    assert closed.tasks[0].outcomes == {"ok": 2} and closed.tasks[0].running == {}


@pytest.mark.process
def test_the_miner_prints_each_validators_feedback(tmp_path, make_net):
    """A miner process asks a validator's peer endpoint over HTTP, as an operator would."""
    import subprocess
    import sys

    from devtools.localproc import ROOT, free_port
    from tests.servers import serving

    port = free_port()
    net = make_net(age_blocks=100)
    chain, wallets = net.local, net.wallets
    validator = net.validator(stake=10, endpoint=f"http://127.0.0.1:{port}")
    miner = net.miner()
    me, mine = validator.hotkey.ss58_address, miner.hotkey.ss58_address
    store = open_store(str(tmp_path / "v.sqlite3"))
    store.begin_period(1, 60, "0x1", 1.0, 0.0,
                       [Contender(1, mine, "chat-llama-3", 900, 900, 0)])
    store.finish_period(1, {(mine, "chat-llama-3"): ContenderState(
        declared=900, demonstrated=900, credited=900, reliability=1.0, scored=((75.0, 1.0),))})
    record(store, RequestRecord(1, mine, "chat-llama-3", False, Outcome.TIMEOUT, 50.0, 9.0))
    store.begin_period(2, 120, "0x2", 1.0, 0.0,
                       [Contender(1, mine, "chat-llama-3", 900, 900, 0)])
    record(store, RequestRecord(2, mine, "chat-llama-3", False, Outcome.OK, 50.0, 1.0))

    import asyncio

    graph = asyncio.run(chain.chain().metagraph())
    services = PeerServices(me, lambda: graph, ValidatorMetrics(), None, AsyncStore(store))
    with serving(build_peer_app(services), port):
        run = subprocess.run(
            [sys.executable, "neurons/miner.py", "--feedback", "--network",
             f"local:{tmp_path / 'chain'}", "--wallet-name", "miner", "--wallet-path",
             str(wallets)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "validator uid 0" in run.stdout and "chat-llama-3" in run.stdout
    assert "credited 900" in run.stdout and "window scores (oldest first): 1.00" in run.stdout
    assert "scored period 1; period 2 running" in run.stdout
    assert "requests in scored period 1: 1 timeout" in run.stdout
    assert "1 timeout in period 1: answered after the task's expected time" in run.stdout
    assert "requests in running period 2 so far: 1 ok" in run.stdout
