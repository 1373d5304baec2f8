"""Weights as the chain accepts them (core/validator/weights.py), through the production adapter
on the local subnet's chain: retried with backoff when the connection fails, never all-zero,
deferred (not retried) under the rate limit, padded to MinAllowedWeights, refused under a newer
version key, nothing for a re-registered uid, commit-reveal recorded as committed then revealed,
the activity cutoff watched; --status shows what the database holds."""

import asyncio
import json
import logging

import numpy as np
import pytest

from core.localchain import LocalSubnet
from core.storage import open_store
from core.validator.loop import Settings, Validator
from core.validator.status import status
from core.validator.weights import WEIGHTS_VERSION_KEY
from devtools.localproc import make_wallet
from tests.records import record


@pytest.fixture
def setup(tmp_path, make_net):
    net = make_net(tempo=50, age_blocks=1000, block_time=0.1)
    wallet = net.validator("v", stake=1)
    for i in range(3):
        net.miner(f"m{i}", coldkey=None)
    return tmp_path, wallet


def validator(tmp_path, wallet, retries=3):
    v = Validator(wallet, LocalSubnet(tmp_path / "chain").chain(),
                  open_store(str(tmp_path / "v.sqlite3")),
                  Settings(weight_retries=retries, check="off", tokenizers="tiny"))
    return v, LocalSubnet(tmp_path / "chain")


def send(v, vector):
    async def go():
        await v.weights.send(np.array(vector), await v.chain.metagraph())
        if v.weights._deferred is not None:
            await v.weights._deferred
    asyncio.run(go())


def submits(v) -> int:
    return v.chain._client._substrate.calls.get("submit", 0)


@pytest.fixture
def no_backoff(monkeypatch):
    from core.validator.weights import WeightSetter

    monkeypatch.setattr(WeightSetter, "backoff_s", 0.01)


def test_weights_are_retried_through_a_lost_connection_then_set(setup, no_backoff):
    tmp_path, wallet = setup
    v, local = validator(tmp_path, wallet)
    local.fail("submit", "connection", 2)
    send(v, [0.0, 0.25, 0.75])
    assert submits(v) == 3 and len(local.weights_log()) == 1
    assert v.store.last_weights()[1] == {1: 0.25, 2: 0.75}


def test_weights_give_up_after_the_retries(setup, no_backoff):
    tmp_path, wallet = setup
    v, local = validator(tmp_path, wallet, retries=3)
    local.fail("submit", "connection", 5)
    send(v, [0.0, 1.0])
    assert submits(v) == 3 and local.weights_log() == [] and v.store.last_weights() is None


def test_an_all_zero_table_is_never_set(setup):
    tmp_path, wallet = setup
    v, _ = validator(tmp_path, wallet)
    send(v, np.zeros(4))
    assert submits(v) == 0


def test_a_chain_refusal_is_not_retried(setup, caplog):
    tmp_path, wallet = setup
    v, local = validator(tmp_path, wallet)
    local.stake(wallet.hotkey.ss58_address, 1, validator_permit=False)
    asyncio.run(asyncio.sleep(0.3))  # its block
    with caplog.at_level(logging.ERROR):
        send(v, [0.0, 1.0])
    assert submits(v) == 1 and "no validator permit" in caplog.text


def test_the_rate_limit_defers_the_vector_to_the_block_it_allows(setup):
    tmp_path, wallet = setup
    v, local = validator(tmp_path, wallet)
    local.set_hyperparameters(weights_rate_limit=20)
    send(v, [0.0, 1.0])
    first = local.weights_log()[-1]["block"]
    send(v, [0.0, 0.0, 1.0])  # refused now: sent once 20 blocks have passed, never before
    log = local.weights_log()
    assert submits(v) == 2 and len(log) == 2
    assert log[1]["block"] - first >= 20 and log[1]["weights"] == {"2": 65535}


def test_fewer_weights_than_the_minimum_are_padded_with_dust(setup):
    tmp_path, wallet = setup
    v, local = validator(tmp_path, wallet)
    local.set_hyperparameters(min_allowed_weights=3)
    send(v, [0.0, 0.0, 1.0, 1e-7])  # 1e-7 rounds to 0 in u16: it does not count
    [entry] = local.weights_log()
    weights = entry["weights"]
    assert len(weights) == 3 and weights["2"] == 65535 and weights["0"] == 1  # own uid first
    assert sorted(weights.values()) == [1, 1, 65535]


def test_padding_goes_to_uids_of_each_validators_own_order():
    from core.validator.weights import pad

    orders = {tuple(sorted(pad({5: 1.0}, 4, list(range(64)), own=0, hotkey=f"v{i}")))
              for i in range(8)}
    assert len(orders) > 1  # no two validators of eight pad alike, so no majority does


def test_a_max_weight_that_would_lift_the_padding_sends_nothing(setup, caplog):
    tmp_path, wallet = setup
    v, local = validator(tmp_path, wallet)
    local.set_hyperparameters(min_allowed_weights=3, max_weights_limit=int(0.4 * 65535))
    with caplog.at_level(logging.ERROR):
        send(v, [0.0, 0.0, 1.0])  # one scored uid can hold at most 0.4: padding would get 0.6
    assert submits(v) == 0 and "would pay the padded ones" in caplog.text


def test_a_deferred_vector_is_checked_against_the_head_when_it_goes(setup):
    tmp_path, wallet = setup
    v, local = validator(tmp_path, wallet)
    local.set_hyperparameters(weights_rate_limit=20)
    send(v, [0.0, 1.0])

    async def go():
        await v.weights.send(np.array([0.0, 0.5, 0.5]), await v.chain.metagraph())
        assert v.weights._deferred is not None  # waiting for the rate limit
        local.register(make_wallet(tmp_path / "w", "newcomer").hotkey.ss58_address, uid=1)
        await v.weights._deferred
    asyncio.run(go())
    assert local.weights_log()[-1]["weights"] == {"2": 65535}


def test_a_newer_version_key_on_chain_sends_nothing_and_says_upgrade(setup, caplog):
    tmp_path, wallet = setup
    v, local = validator(tmp_path, wallet)
    local.set_hyperparameters(weights_version_key=WEIGHTS_VERSION_KEY + 1)
    with caplog.at_level(logging.ERROR):
        send(v, [0.0, 1.0])
    assert submits(v) == 0 and "upgrade" in caplog.text
    local.set_hyperparameters(weights_version_key=WEIGHTS_VERSION_KEY)
    send(v, [0.0, 1.0])
    assert local.weights_log()[0]["version_key"] == WEIGHTS_VERSION_KEY


def test_a_uid_reregistered_since_the_period_began_gets_no_weight(setup, tmp_path):
    tmp_path, wallet = setup
    v, local = validator(tmp_path, wallet)

    async def go():
        period_start = await v.chain.metagraph()
        newcomer = make_wallet(tmp_path / "w", "newcomer")
        local.register(newcomer.hotkey.ss58_address, uid=1)  # at the head: seen at once
        await v.weights.send(np.array([0.0, 0.5, 0.5]), period_start)
    asyncio.run(go())
    [entry] = local.weights_log()
    assert entry["weights"] == {"2": 65535}


def test_commit_reveal_is_recorded_as_committed_then_revealed(setup):
    tmp_path, wallet = setup
    v, local = validator(tmp_path, wallet)
    local.set_hyperparameters(commit_reveal=True, tempo=5)
    local.set_hyperparameters(weights_rate_limit=0)

    async def until_revealed():
        while v.store.pending_commit() is not None:
            await v.weights.watch(await v.chain.metagraph())
            await asyncio.sleep(0.1)

    send(v, [0.0, 0.25, 0.75])
    block, weights, reveal_round = v.store.pending_commit()
    assert weights == {1: 0.25, 2: 0.75} and reveal_round > 0 and local.weights_log() == []
    asyncio.run(asyncio.wait_for(until_revealed(), 30))
    assert local.weights_log()[0]["committed_at"] == block
    # the same uids with other values: not revealed until the chain holds those values
    send(v, [0.0, 0.75, 0.25])
    asyncio.run(v.weights.watch(asyncio.run(v.chain.metagraph())))
    assert v.store.pending_commit() is not None
    asyncio.run(asyncio.wait_for(until_revealed(), 30))
    assert local.weights_log()[-1]["weights"] == {"1": 65535, "2": 21845}
    assert v.metrics.weights.labels("revealed")._value.get() == 2


def test_weights_near_the_activity_cutoff_are_a_metric_and_a_loud_line(setup, caplog):
    tmp_path, wallet = setup
    v, local = validator(tmp_path, wallet)
    local.set_hyperparameters(activity_cutoff=100)
    send(v, [0.0, 1.0])
    asyncio.run(asyncio.sleep(11 * 0.1))  # 90% of the cutoff passes (blocks of 0.1 s)
    local.set_hyperparameters(activity_cutoff=10)
    with caplog.at_level(logging.ERROR):
        asyncio.run(v.weights.watch(asyncio.run(v.chain.metagraph())))
    assert v.metrics.weights_age._value.get() >= 10
    assert v.metrics.activity_cutoff._value.get() == 10
    assert "activity cutoff" in caplog.text
    caplog.clear()
    local.set_hyperparameters(activity_cutoff=100)
    send(v, [0.0, 1.0])
    with caplog.at_level(logging.ERROR):
        asyncio.run(v.weights.watch(asyncio.run(v.chain.metagraph())))
    assert v.metrics.weights_age._value.get() < 80 and "activity cutoff" not in caplog.text


def test_status_shows_the_latest_period(setup):
    from core.budget import Contender
    from core.plan import Window
    from core.records import Outcome, RequestRecord

    tmp_path, wallet = setup
    store = open_store(str(tmp_path / "v.sqlite3"))
    assert status(store, 300) == "no period recorded yet"
    store.begin_period(7, 2100, "0x1", 0.25, 0.0, [Contender(3, "hk", "inpaint", 400.0, 100.0, 0),
                                                   Contender(4, "hk4", "inpaint", 40.0, 10.0, 0)])
    store.add_window(7, Window(2150, 1000.0, 60.0))
    record(store, RequestRecord(7, "hk", "inpaint", False, Outcome.OK, 20, 1.0, 1.0, 1010.0))
    record(store, RequestRecord(7, "hk", "inpaint", False, Outcome.RATE_LIMITED, 20, 0.1, None,
                               1020.0))
    record(store, RequestRecord(7, "hk", "inpaint", False, Outcome.OK, 20, 1.0, None, 5000.0))
    store.note_weights(2000, 0.0, {3: 1.0})
    text = status(store, 300)
    assert (
        "== period 7 == windows: block 2150 (60s, own view: reports cover 0% of stake)" in text
        and "in progress" in text
    )
    row = next(line for line in text.splitlines() if line.lstrip().startswith("3 inpaint"))
    # declared, budget, requests, window asked / good / demonstrated (400 x the worst slice's
    # 0: its own view judges every slice it sent requests in), other
    assert row.split()[2:9] == ["400", "100", "3", "40", "20", "0", "20"]
    assert "uid 3: 1.000" in text and "block 2000" in text
    # only the contenders asked for, and the same as JSON for scripts
    assert "3 inpaint" in text and "4 inpaint" in text
    only = status(store, 300, hotkeys=["hk4"])
    assert "4 inpaint" in only and "3 inpaint" not in only
    data = json.loads(status(store, 300, uids=[3], as_json=True))
    assert data["period"] == 7 and not data["finished"] and data["weights"] == {"3": 1.0}
    assert [c["uid"] for c in data["contenders"]] == [3]
    first = data["contenders"][0]
    assert (first["declared"], first["requests"], first["other_asked"]) == (400.0, 3, 20.0)
    assert first["windows"] == [{"block": 2150, "asked": 40.0, "good": 20.0, "served": 0.0,
                                 "pooled": False}]
    assert data["windows"][0]["coverage"] == 0.0 and data["windows"][0]["pooled_from"] == []


def test_status_shows_each_contenders_window_history_and_draws_the_period(setup):
    from core.budget import Contender
    from core.scoring import ContenderState
    from core.validator.picture import period_png
    from core.validator.status import snapshot

    tmp_path, _ = setup
    store = open_store(str(tmp_path / "v.sqlite3"))
    store.begin_period(8, 2400, "0x2", 1.0, 0.0, [Contender(3, "hk", "inpaint", 400.0, 400.0, 0)])
    store.finish_period(8, {("hk", "inpaint"): ContenderState(
        declared=400, demonstrated=300, credited=300, reliability=0.5, quality=1.0,
        scored=((40.0, 0.25), (40.0, 1.0)), demonstrated_w=(200.0, 400.0))})
    text = status(store, 300, history=True)
    assert "scores 0.25 1.00" in text and "shown  200 400" in text
    data = json.loads(status(store, 300, as_json=True))
    assert data["contenders"][0]["history"] == {
        "windows": [{"asked": 40.0, "score": 0.25}, {"asked": 40.0, "score": 1.0}],
        "demonstrated": [200.0, 400.0]}
    png = period_png(snapshot(store, 300), tmp_path / "p.png")
    assert png.read_bytes().startswith(b"\x89PNG")
