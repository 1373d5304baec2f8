"""One signed declaration per period (docs/protocol.md §2, §9): its canonical encoding and
signature, the miner's latch across a health change, a new capacity file and a restart, the
validator's checks of what a miner answers and of what a peer's report carries, and what a
validator makes of an equivocation, of a forged declaration and of a miner silent to it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace

import pytest
from bittensor.sp_core import Keypair
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.budget import Contender
from core.declaration import SignedDeclaration, equivocations, message, sign
from core.metagraph import Metagraph, Neuron
from core.miner.app import MinerSettings, MinerState, build_app
from core.miner.config import ConfigError
from core.miner.latch import DeclarationLatch, WrongPeriod
from core.miner.limits import Slots
from core.miner.pool import Pool, Worker
from core.period import close_period
from core.plan import SLICES, Window
from core.pooling import report_cap
from core.protocol import CAPACITY_PATH, CapacityRequest, CapacityResponse
from core.records import Outcome, RequestRecord, period_outcomes
from core.scoring import Tally, WindowOutcome
from core.storage import AsyncStore, open_store
from core.transport.auth import Gate
from core.transport.client import SignedClient
from core.validator.dispatch import fetch_capacities
from core.validator.measure import declared_in, measure_period, unplanned
from core.validator.metrics import ValidatorMetrics
from core.validator.peer import PeerServices, build_peer_app
from core.validator.sharing import Rejected, Sharing
from core.window_report import MAX_DECLARATIONS, WindowReport, report_of
from devtools.localproc import free_port
from tests.records import record
from tests.servers import serving

NETUID, PERIOD, PB = 19, 7, 60
CHAT = "chat-llama-3"
KEYS = {name: Keypair.create_from_uri(f"//{name}") for name in
        ("miner", "honest", "equivocator", "silent", "refuser", "me", "v35", "v20", "other")}


def hotkey(name: str) -> str:
    return KEYS[name].ss58_address


def signed(name: str, chat: float = 2400.0, period: int = PERIOD,
           netuid: int = NETUID) -> SignedDeclaration:
    return sign(KEYS[name], netuid, period, {CHAT: chat})


# -- the declaration itself --

def test_a_declaration_counts_only_as_its_hotkey_signed_it():
    d = signed("miner")
    assert d.signed_by_hotkey()
    assert SignedDeclaration.model_validate_json(d.model_dump_json()).signed_by_hotkey()
    assert not d.model_copy(update={"capacities": {CHAT: 4800.0}}).signed_by_hotkey()
    assert not d.model_copy(update={"period": PERIOD + 1}).signed_by_hotkey()
    assert not d.model_copy(update={"hotkey": hotkey("other")}).signed_by_hotkey()
    assert not d.model_copy(update={"hotkey": "not an address"}).signed_by_hotkey()
    # a peer that signs a miner's declaration with its own key has not made the miner's
    forged = sign(KEYS["other"], NETUID, PERIOD, {CHAT: 4800.0}).model_copy(
        update={"hotkey": hotkey("miner")})
    assert not forged.signed_by_hotkey()


def test_key_order_and_number_formatting_make_one_encoding():
    d = sign(KEYS["miner"], NETUID, PERIOD, {CHAT: 2400.0, "inpaint": 0.0})
    wire = json.loads(d.model_dump_json())
    # the same declaration written otherwise: keys reordered, 2.4e3 for 2400.0, -0.0 for 0.0
    rewritten = (f'{{"signature": "{wire["signature"]}", "capacities": {{"inpaint": -0.0, '
                 f'"{CHAT}": 2.4e3}}, "hotkey": "{wire["hotkey"]}", "period": {PERIOD}, '
                 f'"netuid": {NETUID}}}')
    back = SignedDeclaration.model_validate_json(rewritten)
    assert back.message() == d.message() and back.signed_by_hotkey()
    assert message(NETUID, PERIOD, "h", {"b": 1, "a": 0.5}) == \
        message(NETUID, PERIOD, "h", {"a": 0.5, "b": 1.0})


capacities = st.dictionaries(st.text(max_size=6), st.floats(min_value=0, max_value=1e12),
                             max_size=4)


@pytest.mark.property
@settings(max_examples=300, deadline=None)
@given(capacities, capacities)
def test_two_declarations_share_an_encoding_only_when_they_are_one(a, b):
    same = {k: v + 0.0 for k, v in a.items()} == {k: v + 0.0 for k, v in b.items()}
    assert (message(NETUID, PERIOD, "h", a) == message(NETUID, PERIOD, "h", b)) == same


def test_a_report_carries_one_declaration_per_miner_and_a_bounded_number():
    one = signed("miner")
    with pytest.raises(ValidationError, match="carried twice"):
        report_of(NETUID, "v", 10, {}, [one, signed("miner", 1200.0)])
    many = [one] * (MAX_DECLARATIONS + 1)
    with pytest.raises(ValidationError, match="at most"):
        WindowReport(netuid=NETUID, validator="v", block=10, rows=[], declarations=many)


# -- the miner: one declaration a period --

def pool(capacity: float) -> Pool:
    return Pool(CHAT, [Worker("gpu", capacity, 1)])


def miner_state(folder, capacity: float, block: float, period_blocks: int = 100) -> MinerState:
    """A miner's shared state whose view of the chain is at ``block`` (12 s blocks)."""
    keypair = KEYS["miner"]
    return MinerState(hotkey=keypair.ss58_address, pools={CHAT: pool(capacity)}, chain=None,
                      gate=Gate(keypair.ss58_address), period_blocks=period_blocks,
                      slots=Slots({}, {CHAT: None}, 5),
                      latch=DeclarationLatch(keypair, NETUID, folder),
                      head=int(block), synced_at=time.monotonic(), block_time=12.0)


def test_one_declaration_a_period_across_a_lost_worker_a_new_file_and_a_restart(tmp_path):
    state = miner_state(tmp_path, 2400.0, 750)
    first = state.signed_declaration(7)
    assert first.capacities == {CHAT: 2400.0} and first.signed_by_hotkey()
    state.pools[CHAT].workers[0].healthy = False  # a lost worker: from the next period on
    assert state.signed_declaration(7) == first and state.signed_declaration(None) == first
    # restarted on a capacity file that declares twice as much, in the same period
    restarted = miner_state(tmp_path, 4800.0, 760)
    assert restarted.signed_declaration(7) == first  # byte for byte, the same signature
    later = miner_state(tmp_path, 4800.0, 800)
    assert later.signed_declaration(8).capacities == {CHAT: 4800.0}
    assert DeclarationLatch(KEYS["miner"], NETUID, tmp_path).signed[7] == first  # remembered


def test_the_miner_signs_its_period_or_in_its_last_minute_the_next(tmp_path):
    state = miner_state(tmp_path, 2400.0, 750)  # period 7, 600 s left
    for asked in (6, 8, 9, 10**6):
        with pytest.raises(WrongPeriod):
            state.signed_declaration(asked)
    assert state.latch.signed == {}  # nothing signed for them
    assert state.signed_declaration(None).period == 7
    near_end = miner_state(tmp_path, 2400.0, 796)  # 48 s left: a validator may be ahead
    assert near_end.signed_declaration(8).period == 8


def test_a_declaration_is_answered_only_once_recorded(tmp_path, monkeypatch):
    state = miner_state(tmp_path / "full-disk", 2400.0, 750)

    def full(*_):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("core.miner.latch.os.replace", full)
        with pytest.raises(OSError):
            state.signed_declaration(7)
    assert state.latch.signed == {} and list((tmp_path / "full-disk").iterdir()) == []
    folder = tmp_path / "state"
    miner_state(folder, 2400.0, 750).signed_declaration(7)
    (latched,) = folder.glob("declarations-*.json")
    latched.write_text(latched.read_text()[:-5])  # cut short: what it signed is unknown
    with pytest.raises(ConfigError, match="second declaration"):
        miner_state(folder, 2400.0, 750)
    # a latch forgets only periods it will not sign again
    latch = DeclarationLatch(KEYS["miner"], NETUID, tmp_path / "old")
    for period in (1, 2, 3, 4):
        latch.declare(period, lambda: {CHAT: 1.0})
    assert set(latch.signed) == {2, 3, 4}
    with pytest.raises(WrongPeriod):
        latch.declare(1, lambda: {CHAT: 2.0})


def test_every_validator_gets_the_same_signed_declaration(subnet, tmp_path):
    wallet = subnet.miner.hotkey
    me = wallet.ss58_address
    state = MinerState(hotkey=me, pools={CHAT: pool(2400.0)}, chain=subnet.chain,
                       gate=Gate(me, min_stake=100), period_blocks=1000,
                       slots=Slots({}, {CHAT: None}, 5),
                       latch=DeclarationLatch(wallet, subnet.chain.netuid, tmp_path))
    from tests.test_miner_app import post

    with TestClient(build_app(state, MinerSettings(sync_interval_s=3600)),
                    client=("127.0.0.1", 50000)) as client:
        period, _ = state.period()
        answers = [post(client, CAPACITY_PATH, CapacityRequest(period=period), v, me)
                   for v in (subnet.validator, subnet.other)]
        far = post(client, CAPACITY_PATH, CapacityRequest(period=period + 5), subnet.validator,
                   me)
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].content == answers[1].content
    got = CapacityResponse.model_validate_json(answers[0].content)
    assert (got.period, got.netuid, got.hotkey) == (period, subnet.chain.netuid, me)
    assert got.signed_by_hotkey()
    assert far.status_code == 409 and "not this miner's current one" in far.json()["error"]


# -- the validator: what counts of a miner's answer --

MODES = ("honest", "forged", "other-hotkey", "netuid", "period", "tampered", "unsigned")


def answering_miners() -> FastAPI:
    """A miner per mode at ``/<mode>``, each answering the capacity call as the mode says."""
    app = FastAPI()

    @app.post("/{mode}" + CAPACITY_PATH)
    async def capacity(mode: str, request: Request):
        period = CapacityRequest.model_validate_json(await request.body()).period
        key = KEYS[mode] if mode in KEYS else Keypair.create_from_uri(f"//{mode}")
        d = sign(key, NETUID, period, {CHAT: 2400.0})
        if mode == "forged":
            d = sign(KEYS["other"], NETUID, period, {CHAT: 2400.0}).model_copy(
                update={"hotkey": key.ss58_address})
        elif mode == "other-hotkey":
            d = sign(KEYS["other"], NETUID, period, {CHAT: 2400.0})
        elif mode == "netuid":
            d = sign(key, NETUID + 1, period, {CHAT: 2400.0})
        elif mode == "period":
            d = sign(key, NETUID, period + 1, {CHAT: 2400.0})
        elif mode == "tampered":
            d = d.model_copy(update={"capacities": {CHAT: 4800.0}})
        elif mode == "unsigned":
            d = d.model_copy(update={"signature": "0x" + "00" * 64})
        return Response(CapacityResponse(**d.model_dump()).model_dump_json(),
                        media_type="application/json")

    return app


def test_the_validator_counts_only_its_miners_own_signature_of_this_netuid_and_period(caplog):
    port = free_port()
    miners = [Neuron(i, (KEYS[m] if m in KEYS else Keypair.create_from_uri(f"//{m}")).ss58_address,
                     "c", 0.0, False, f"http://127.0.0.1:{port}/{m}", 0)
              for i, m in enumerate(MODES)]

    async def ask():
        client = SignedClient(KEYS["me"])
        try:
            return await fetch_capacities(client, miners, 5.0, NETUID, PERIOD)
        finally:
            await client.close()

    with serving(answering_miners(), port), caplog.at_level(logging.INFO):
        got = asyncio.run(ask())
    assert list(got) == [hotkey("honest")] and got[hotkey("honest")].period == PERIOD
    said = {int(m.split(":")[0].removeprefix("uid ")): m for m in
            (r.getMessage() for r in caplog.records) if "does not count" in m}
    assert set(said) == set(range(1, len(MODES)))
    for i, why in enumerate(("not signed by its hotkey", f"not {miners[2].hotkey}",
                             f"for netuid {NETUID + 1}", f"for period {PERIOD + 1}",
                             "not signed by its hotkey", "not signed by its hotkey"), start=1):
        assert why in said[i], (MODES[i], said[i])


# -- the validator's close: equivocation, forgery, silence --

STAKES = {"me": 45.0, "v35": 35.0, "v20": 20.0}
BLOCK = PERIOD * PB + 10


def contender(name: str, uid: int, declared: float = 2400.0, share: float = 0.45) -> Contender:
    return Contender(uid, hotkey(name), CHAT, declared, declared * share, 0)


def served_window(c: Contender, v: str, fraction: float = 1.0) -> WindowOutcome:
    """Validator ``v``'s view of ``c``'s window: its share asked, ``fraction`` of it served."""
    asked = report_cap(c, STAKES[v] / sum(STAKES.values()), PB).slice
    return WindowOutcome(BLOCK, (Tally(asked, asked * fraction, asked * (1 - fraction), 0.0,
                                       2),) * SLICES)


def period_store(tmp_path, planned: list[Contender], own: list[SignedDeclaration],
                 peers: dict[str, tuple[dict, list[SignedDeclaration]]],
                 mine: dict | None = None):
    """This validator ("me", 45% of the stake) with a window in which every planned contender
    served each of its requests, its report of it (``mine``: these outcomes instead), and the
    peers' reports (outcomes by key, declarations carried)."""
    store = open_store(str(tmp_path / "me.sqlite3"))
    store.begin_period(PERIOD, PERIOD * PB, "0x0", 0.45, 0.0, planned, STAKES, own)
    window = store.add_window(PERIOD, Window(BLOCK, 1000.0, 25.0))
    for c in planned:
        for i in range(SLICES):
            record(store, RequestRecord(PERIOD, c.hotkey, CHAT, False, Outcome.OK, 64, 0.1,
                                       None, 1000.5 + 5 * i))
    if mine is None:
        mine = {k: o.windows[0] for k, (o, _) in
                period_outcomes(planned, store.records(PERIOD), [window]).items()}
    store.add_report(PERIOD, report_of(NETUID, "me", BLOCK, mine, own), 0.0)
    for v, (outcomes, carried) in peers.items():
        store.add_report(PERIOD, report_of(NETUID, v, BLOCK, outcomes, carried), 0.0)
    return store


def weights_of(store, planned: list[Contender]):
    measured, _ = measure_period(store, PERIOD, planned, PB)
    closing = close_period(planned, {k: o for k, (o, _) in measured.items()}, {}, 4)
    return measured, closing.weights


@pytest.mark.parametrize("proof", ["own and a peer's", "two peers'"])
def test_an_equivocation_forfeits_the_miners_period_and_nobody_elses(tmp_path, proof):
    honest, liar = contender("honest", 1), contender("equivocator", 2)
    high, low = signed("equivocator", 2400.0), signed("equivocator", 1200.0)
    told_me = [signed("honest")] + ([high] if proof == "own and a peer's" else [])
    planned = [honest, liar] if proof == "own and a peer's" else [honest]
    served = {(c.hotkey, CHAT): c for c in (honest, liar)}
    peers = {v: ({k: served_window(c, v) for k, c in served.items()},
                 [signed("honest"), low if v == "v35" else high]) for v in ("v35", "v20")}
    store = period_store(tmp_path, planned, told_me, peers)
    held = declared_in(store, PERIOD, store.reports(PERIOD))
    assert set(held.proofs) == {hotkey("equivocator")}
    planned += unplanned(held, planned, Metagraph(0, tuple(
        Neuron(c.uid, c.hotkey, "c", 0.0, False, None, 0) for c in (honest, liar))))
    measured, weights = weights_of(store, planned)
    cheat, fair = measured[(liar.hotkey, CHAT)][0], measured[(honest.hotkey, CHAT)][0]
    assert cheat.declared == 0.0 and all(w.score == 0.0 for w in cheat.windows)
    assert fair.declared == 2400.0 and fair.windows[0].served == pytest.approx(1.0)
    assert weights[2] == 0.0 and weights[1] == pytest.approx(1.0)


def test_a_forged_declaration_in_a_report_frames_nobody(tmp_path):
    honest = contender("honest", 1)
    # v35 carries a "second declaration" of the honest miner, signed with its own key
    forged = sign(KEYS["v35"], NETUID, PERIOD, {CHAT: 1.0}).model_copy(
        update={"hotkey": hotkey("honest")})
    key = (honest.hotkey, CHAT)
    peers = {"v35": ({key: served_window(honest, "v35")}, [forged]),
             "v20": ({key: served_window(honest, "v20")}, [signed("honest")])}
    store = period_store(tmp_path, [honest], [signed("honest")], peers)
    assert equivocations([signed("honest"), forged]) == {}
    measured, weights = weights_of(store, [honest])
    assert measured[key][0].declared == 2400.0 and weights[1] == pytest.approx(1.0)


def test_a_report_carrying_a_forged_declaration_is_rejected_and_logged(tmp_path, caplog):
    """Fetched from a real peer endpoint: the report is refused as a whole, counted and logged,
    and nothing of it is stored."""
    me, peer = KEYS["me"], KEYS["v35"]
    port = free_port()
    graph = Metagraph(0, (Neuron(0, me.ss58_address, "c", 45.0, True, None, 0),
                          Neuron(1, peer.ss58_address, "c", 35.0, True,
                                 f"http://127.0.0.1:{port}", 0)))
    forged = sign(peer, NETUID, PERIOD, {CHAT: 1.0}).model_copy(update={"hotkey": hotkey("honest")})
    theirs = open_store(str(tmp_path / "peer.sqlite3"))
    theirs.add_report(PERIOD, report_of(NETUID, peer.ss58_address, BLOCK, {}, [forged]), 0.0)

    class Subnet:
        netuid = NETUID

        async def metagraph(self, block=None):
            return graph

    metrics = ValidatorMetrics()
    services = PeerServices(peer.ss58_address, lambda: graph, metrics,
                            Sharing(SignedClient(peer), peer, theirs, Subnet(), metrics),
                            AsyncStore(theirs))

    mine = open_store(str(tmp_path / "me.sqlite3"))

    async def collect():
        sharing = Sharing(SignedClient(me), me, mine, Subnet(), ValidatorMetrics())
        try:
            await sharing.collect(PERIOD, BLOCK, graph, time.time(), 1.0)
            with pytest.raises(Rejected) as refused:
                await sharing.fetch(graph.neurons[1], PERIOD, BLOCK, graph)
        finally:
            await sharing.client.close()
        return sharing.metrics, refused.value

    with serving(build_peer_app(services), port), caplog.at_level(logging.WARNING):
        metrics, refused = asyncio.run(collect())
    assert refused.reason == "declaration" and "not signed by its hotkey" in str(refused)
    assert metrics.reports.labels("rejected", "declaration")._value.get() == 1
    assert mine.reports(PERIOD) == {}
    assert any("rejected (declaration)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("planned", [False, True], ids=["never planned", "planned at 0"])
def test_a_silent_miner_is_scored_on_its_peers_declaration_as_refusing_this_validator(
        tmp_path, planned):
    """A miner that answers the others and not this validator declared to it what it declared
    to them, and its silence weighs in the pool as a refusal of every request would. (Planned
    at 0: it declared the task to this validator last period, so the period opened with it at
    0.)"""
    silent = contender("silent", 1, share=0.0)
    refuser = contender("refuser", 2)  # answered this validator, then refused all its requests
    key, other = (silent.hotkey, CHAT), (refuser.hotkey, CHAT)
    peers = {v: ({key: served_window(silent, v), other: served_window(refuser, v)},
                 [signed("silent"), signed("refuser")]) for v in ("v35", "v20")}
    store = period_store(tmp_path, [], [signed("refuser")], peers,
                         mine={other: served_window(refuser, "me", 0.0)})
    opened = [refuser] + ([replace(silent, declared=0.0)] if planned else [])
    store.add_contenders(PERIOD, opened)
    graph = Metagraph(0, tuple(Neuron(c.uid, c.hotkey, "c", 0.0, False, None, 0)
                               for c in (silent, refuser)))
    found = unplanned(declared_in(store, PERIOD, store.reports(PERIOD)), opened, graph)
    assert found == ([] if planned else [silent])  # budget 0: it was sent nothing
    measured, _ = measure_period(store, PERIOD, opened + found, PB)
    quiet, refusing = measured[key][0], measured[other][0]
    assert quiet.declared == 2400.0  # not 0: silence is not a lower declaration
    assert quiet.windows[0].pooled and quiet.windows[0].tally.good < quiet.windows[0].tally.asked
    assert quiet.windows[0].served == pytest.approx(refusing.windows[0].served)
    assert quiet.windows[0].score == pytest.approx(refusing.windows[0].score)
    assert quiet.windows[0].served < 0.5


def test_on_its_own_view_a_validator_counts_a_silent_miners_windows_as_refused(tmp_path):
    silent = contender("silent", 1, share=0.0)
    key = (silent.hotkey, CHAT)
    # only v20's report came: with this validator's own, 65% of the stake, under 2/3
    store = period_store(tmp_path, [], [], {"v20": ({key: served_window(silent, "v20")},
                                                    [signed("silent")])})
    measured, poolings = measure_period(store, PERIOD, [silent], PB)
    window = measured[key][0].windows[0]
    assert poolings[0].used == () and not window.pooled
    assert window.tally.asked > 0 and window.served == 0.0
