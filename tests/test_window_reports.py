"""Validators' window reports (docs/protocol.md §9): the pooling rule, the store's view of a period
with reports, and the exchange against a validator that lies about its reports, in a real
process (tests/hostile_validator.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from bittensor import http_auth
from fastapi.testclient import TestClient

from core.budget import Contender
from core.metagraph import Metagraph, Neuron
from core.plan import SLICES, Window
from core.pooling import COVERAGE, most_lowered, pool_window, report_cap
from core.records import (
    Outcome,
    RequestRecord,
    outcome_tallies,
    period_outcomes,
    window_outcomes,
)
from core.scoring import Tally, WindowOutcome
from core.storage import AsyncStore, open_store
from core.transport.client import SignedClient
from core.validator.measure import measure_period
from core.validator.metrics import ValidatorMetrics
from core.validator.peer import PeerServices, build_peer_app
from core.validator.sharing import Rejected, Sharing
from core.window_report import REPORT_PATH, ReportRequest, WindowReport, report_of
from devtools.localproc import ROOT, free_port, make_wallet
from tests.records import record

PB = 60
STAKES = {"v45": 45.0, "v35": 35.0, "v20": 20.0}
TOTAL = sum(STAKES.values())


def contender(hotkey: str, declared: float = 2400.0) -> Contender:
    return Contender(1, hotkey, "chat-llama-3", declared, declared * 0.45, 0)


def window(fraction: float, asked: float, block: int = 30) -> WindowOutcome:
    """A validator's view: ``asked`` units in each slice, ``fraction`` of them served."""
    per = Tally(asked, asked * fraction, asked * (1 - fraction), 0.0, 3)
    return WindowOutcome(block, (per,) * SLICES)


def asked_by(v: str, c: Contender) -> float:
    """What validator ``v`` asks ``c`` in each slice of a window: its share of the rate."""
    return report_cap(c, STAKES[v] / TOTAL, PB).slice


def served(reports: dict, c: Contender) -> float | None:
    pooled, pooling = pool_window(30, reports, [c], STAKES, PB)
    key = (c.hotkey, c.task)
    return pooled[key].served if key in pooled else None


def test_a_miner_serving_the_largest_validator_only_is_credited_less_than_it_served():
    c = contender("stake-first")
    key = (c.hotkey, c.task)
    honest = {v: {key: window(1.0, asked_by(v, c))} for v in STAKES}
    first = {v: {key: window(1.0 if v == "v45" else 0.0, asked_by(v, c))} for v in STAKES}
    assert served(honest, c) == pytest.approx(1.0)
    # it served 45% of the stake: the level is the mean of the lowest 70%, 55% of them refused
    assert served(first, c) == pytest.approx(0.15 / 0.7)


@pytest.mark.parametrize("liar", list(STAKES))
def test_a_lying_validator_moves_its_victim_by_no_more_than_its_stake(liar):
    c = contender("victim")
    key = (c.hotkey, c.task)
    honest = {v: {key: window(0.9, asked_by(v, c))} for v in STAKES}
    lied = {**honest, liar: {key: window(0.0, asked_by(liar, c))}}
    share = STAKES[liar] / TOTAL
    assert served(lied, c) == pytest.approx((1 - most_lowered(share)) * served(honest, c))
    assert most_lowered(share) == pytest.approx(min(1.0, share / 0.7))


def test_a_validator_fabricating_service_for_its_own_miner_lifts_nothing():
    c = contender("colluder's")
    key = (c.hotkey, c.task)
    refused = {v: {key: window(0.0, asked_by(v, c))} for v in STAKES}
    for colluder in STAKES:  # claims every request served: the top 30% of the weight counts
        faked = {**refused, colluder: {key: window(1.0, asked_by(colluder, c))}}
        share = STAKES[colluder] / TOTAL  # ... for nothing
        assert served(faked, c) == pytest.approx(max(0.0, share - 0.3) / 0.7)


def test_a_report_claiming_more_asked_than_its_share_is_capped():
    c = contender("victim")
    key = (c.hotkey, c.task)
    honest = {v: {key: window(1.0, asked_by(v, c))} for v in STAKES}
    pooled, _ = pool_window(30, honest, [c], STAKES, PB)
    # v20 claims it asked a billion units a slice and got none of them
    inflated = {**honest, "v20": {key: window(0.0, 1e9)}}
    lied, _ = pool_window(30, inflated, [c], STAKES, PB)
    assert lied[key].tally.asked == pytest.approx(pooled[key].tally.asked)


def test_reports_covering_less_than_two_thirds_of_stake_leave_each_validator_its_own_view():
    c = contender("miner")
    key = (c.hotkey, c.task)
    some = {v: {key: window(1.0, asked_by(v, c))} for v in ("v45", "v20")}
    assert (45 + 20) / TOTAL < COVERAGE
    pooled, pooling = pool_window(30, some, [c], STAKES, PB)
    assert pooled == {} and pooling.used == () and pooling.coverage == pytest.approx(0.65)


def test_the_period_is_measured_from_the_pooled_reports_once_they_cover_the_stake(tmp_path):
    store = open_store(str(tmp_path / "v.sqlite3"))
    c = Contender(1, "miner", "chat-llama-3", 2400.0, 2400.0 * 0.45, 0)
    store.begin_period(2, 120, "0x1", 0.45, 0.0, [c], STAKES)
    store.add_window(2, Window(150, 1000.0, 5.0))
    for i in range(SLICES):  # this validator (v45) was served every request
        record(store, RequestRecord(2, "miner", "chat-llama-3", False, Outcome.OK, 64, 0.1,
                                   None, 1000.2 + i))
    mine = measure_period(store, 2, [c], PB)[0][("miner", "chat-llama-3")][0]
    assert mine.windows[0].served == 1.0 and not mine.windows[0].pooled
    key = ("miner", "chat-llama-3")
    store.add_report(2, report_of(19, "v45", 150, {key: mine.windows[0]}), 1.0)
    for v in ("v35", "v20"):  # the others were refused everything
        store.add_report(2, report_of(19, v, 150, {key: window(0.0, asked_by(v, c), 150)}), 1.0)
    measured, poolings = measure_period(store, 2, [c], PB)
    pooled = measured[key][0].windows[0]  # served 45% of the stake: credited less than that
    assert pooled.pooled and pooled.served == pytest.approx(0.15 / 0.7)
    assert poolings[0].used == ("v20", "v35", "v45") and poolings[0].coverage == 1.0
    alone = measure_period(store, 2, [c], PB, pooled=False)[0][key][0]
    assert alone.windows[0].served == 1.0  # sharing off: its own view


# -- the exchange, against a validator that lies about its reports --

@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """(port, wallets) of tests/hostile_validator.py, with wallets me, validator, other,
    outsider."""
    wallets = tmp_path_factory.mktemp("wallets")
    keys = {name: make_wallet(wallets, name).hotkey for name in
            ("me", "validator", "other", "outsider")}
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/hostile_validator.py"), str(port),
                             str(wallets)], cwd=ROOT)
    deadline = time.monotonic() + 60
    import socket
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, "the hostile validator exited"
            time.sleep(0.2)
    yield port, keys, wallets
    proc.kill()
    proc.wait()


def metagraph(port: int, keys, mode: str) -> tuple[Metagraph, Neuron]:
    def n(uid, name, permit, stake):
        return Neuron(uid, keys[name].ss58_address, "cold", stake, permit,
                      f"http://127.0.0.1:{port}/{mode}", 0)

    peer = n(1, "outsider" if mode == "outsider" else "validator", mode != "outsider",
             0.0 if mode == "outsider" else 10.0)
    return Metagraph(0, (n(0, "me", True, 10.0), peer)), peer


class Subnet:
    """The chain as a Sharing sees it: netuid 19, and the neurons' announced endpoints."""

    netuid = 19

    def __init__(self, graph: Metagraph | None = None):
        self.graph = graph

    async def metagraph(self, block=None) -> Metagraph:
        return self.graph


async def fetch_all(port, keys, store, modes, timeout_s=2.0):
    sharing = Sharing(SignedClient(keys["me"]), keys["me"], store, Subnet(), ValidatorMetrics(),
                      timeout_s=timeout_s)
    out = {}
    try:
        for mode in modes:
            graph, peer = metagraph(port, keys, mode.split("#")[0])
            try:
                out[mode] = await sharing.fetch(peer, 300 // PB, 300, graph)
            except Rejected as e:
                out[mode] = e.reason
    finally:
        await sharing.client.close()
    return out


@pytest.mark.process
def test_forged_replayed_unsigned_oversized_and_outsiders_reports_are_refused(hostile, tmp_path):
    port, keys, _ = hostile
    store = open_store(str(tmp_path / "v.sqlite3"))
    modes = ["honest", "forged", "unsigned", "replayed", "replayed#again", "stale", "mismatch",
             "invalid", "huge", "oversized", "outsider", "slow"]
    got = asyncio.run(fetch_all(port, keys, store, modes))
    honest = got.pop("honest")
    assert isinstance(honest, WindowReport) and honest.validator == keys["validator"].ss58_address
    assert honest.block == 300 and honest.rows[0].hotkey == "victim"
    assert isinstance(got.pop("replayed"), WindowReport)  # the first time it was fresh
    assert got == {"forged": "forged", "unsigned": "unsigned", "replayed#again": "replayed",
                   "stale": "forged", "mismatch": "mismatch", "invalid": "invalid",
                   "huge": "invalid", "oversized": "oversized", "outsider": "not-validator",
                   "slow": None}


@pytest.mark.process
def test_collect_stores_what_checks_out_and_counts_the_rest(hostile, tmp_path):
    port, keys, _ = hostile
    store = open_store(str(tmp_path / "v.sqlite3"))
    graph, peer = metagraph(port, keys, "honest")

    async def run():
        subnet = Subnet(graph)
        sharing = Sharing(SignedClient(keys["me"]), keys["me"], store, subnet, ValidatorMetrics(),
                          timeout_s=2.0)
        try:
            await sharing.collect(5, 300, graph, time.time() + 5, 0.5)
            subnet.graph, _ = metagraph(port, keys, "forged")  # it moved to a lying endpoint
            await sharing.collect(5, 301, graph, time.time() + 1.5, 0.5)
        finally:
            await sharing.client.close()
        return sharing.metrics

    metrics = asyncio.run(run())
    assert set(store.reports(5)) == {300}
    assert store.report(300, peer.hotkey).rows[0].hotkey == "victim"
    assert metrics.reports.labels("fetched", "")._value.get() == 1
    assert metrics.reports.labels("rejected", "forged")._value.get() >= 2  # asked again, refused
    assert metrics.reports.labels("missing", "")._value.get() == 1


def test_the_peer_endpoint_answers_permitted_validators_only(tmp_path):
    wallets = tmp_path / "w"
    me, peer, outsider = (make_wallet(wallets, n).hotkey for n in ("me", "peer", "outsider"))
    store = open_store(str(tmp_path / "v.sqlite3"))
    store.add_report(1, report_of(19, me.ss58_address, 90, {
        ("m", "chat-llama-3"): window(1.0, 64, 90)}), 1.0)
    graph = Metagraph(60, (Neuron(0, me.ss58_address, "c", 10.0, True, None, 0),
                           Neuron(1, peer.ss58_address, "c", 5.0, True, None, 0),
                           Neuron(2, outsider.ss58_address, "c", 0.0, False, None, 0)))

    metrics = ValidatorMetrics()
    services = PeerServices(me.ss58_address, lambda: graph, metrics,
                            Sharing(SignedClient(me), me, store, Subnet(graph), metrics),
                            AsyncStore(store))
    client = TestClient(build_peer_app(services))

    def ask(signer, block: int):
        body = ReportRequest.model_construct(block=block).model_dump_json().encode()
        headers = http_auth.sign(signer, method="POST", path=REPORT_PATH, body=body,
                                 receiver_ss58=me.ss58_address) if signer else {}
        return client.post(REPORT_PATH, content=body,
                           headers={**headers, "Content-Type": "application/json"})

    assert ask(None, 90).status_code == 401
    assert ask(outsider, 90).status_code == 403
    assert ask(peer, 91).status_code == 404
    assert ask(peer, 2**63).status_code == 422  # beyond a database integer: refused, not a 500
    answer = ask(peer, 90)
    assert answer.status_code == 200
    signer = http_auth.verify(answer.headers, answer.content, method="REPORT",
                              path="/window-report/90", self_hotkey_ss58=peer.ss58_address)
    assert signer.hotkey_ss58 == me.ss58_address
    assert WindowReport.model_validate_json(answer.content).block == 90


def test_a_report_carries_what_was_asked_outside_windows_since_the_window_before(tmp_path):
    """docs/protocol.md §9: every request outside windows falls in exactly one report, those
    after a period's last window in the next period's first."""
    from bittensor.sp_core import Keypair

    me = Keypair.create_from_uri("//Outside")
    store = open_store(str(tmp_path / "v.sqlite3"))
    c = Contender(1, "miner", "chat-llama-3", 2400.0, 1080.0, 0)
    for period, block, start in ((2, 130, 1000.0), (3, 190, 2000.0)):
        store.begin_period(period, period * PB, "0x1", 0.45, 0.0, [c], STAKES)
        store.add_window(period, Window(block, start, 10.0))

    def rec(period, at, outcome=Outcome.OK):
        record(store, RequestRecord(period, "miner", "chat-llama-3", False, outcome, 64, 0.1,
                                   None, at))

    rec(2, 990.0)  # before the first window: in its report
    rec(2, 1005.0)  # in the first window
    rec(2, 1500.0, Outcome.SERVER_ERROR)  # after period 2's last window ...
    rec(3, 1990.0)  # ... and before period 3's first: both in that window's report
    sharing = Sharing(SignedClient(me), me, store, Subnet(), ValidatorMetrics())

    async def report_both() -> list[bool]:
        return [await sharing.own_report(p, store.windows(p)[0], [c]) for p in (2, 3)]

    assert asyncio.run(report_both()) == [True, True]
    key = ("miner", "chat-llama-3")
    first = store.report(130, me.ss58_address).outside()[key]
    second = store.report(190, me.ss58_address).outside()[key]
    assert (first.asked, first.good) == (64, 64)
    assert (second.asked, second.good, second.failed) == (128, 64, 64)


def test_the_stores_sums_make_the_same_report_as_every_record_read(store):
    """A window's tallies and those outside windows, summed by the database (SQLite, PostgreSQL),
    equal ``period_outcomes`` over the records themselves: at a window's first instant, on slice
    boundaries, at its end (outside), abandoned requests (not scored), a miner not contending."""
    import random

    rng = random.Random(29)
    contenders = [Contender(i, f"m{i}", task, 900.0, 400.0, 0)
                  for i in range(6) for task in ("chat-llama-3", "inpaint")]
    w = Window(130, 1000.0 + 1 / 3, 37.3)  # slice edges that are not round numbers
    edges = [w.started_at + w.seconds * i / SLICES for i in range(SLICES + 1)]
    store.begin_period(2, 2 * PB, "0x1", 0.45, 0.0, contenders, STAKES)
    store.begin_period(3, 3 * PB, "0x1", 0.45, 0.0, contenders, STAKES)
    for period in (2, 3):
        for _ in range(600):
            c = rng.choice(contenders + [Contender(9, "stranger", "inpaint", 1.0, 1.0, 0)])
            at = rng.choice([rng.uniform(990.0, 1045.0), rng.choice(edges),
                             rng.choice(edges) - 1e-9])
            record(store, RequestRecord(period, c.hotkey, c.task, rng.random() < 0.2,
                                       rng.choice(list(Outcome)), float(rng.randint(1, 512)),
                                       0.1, None, at))
    records = store.records(3)
    read = period_outcomes(contenders, records, [w])
    assert window_outcomes(contenders, w, store.tallied(3, 3, w.started_at,
                                                        w.started_at + w.seconds, w)) == {
        key: o.windows[0] for key, (o, _) in read.items()}
    since, until = 995.0, w.started_at
    both = [r for p in (2, 3) for r in store.records(p) if since <= r.at < until]
    assert outcome_tallies(contenders, store.tallied(2, 3, since, until)) == {
        key: o.other for key, (o, _) in period_outcomes(contenders, both).items()}
    assert any(o.windows[0].slices[-1].requests for o, _ in read.values())  # not vacuous
