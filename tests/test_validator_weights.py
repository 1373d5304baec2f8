"""Weights leave the validator once per epoch, never all-zero, retried with backoff; --status
shows what the database holds."""

import asyncio
import json

import numpy as np
import pytest

from core.chain.local import LocalChain
from core.storage import open_store
from core.validator.loop import Settings, Validator
from core.validator.status import status
from devtools.localproc import make_wallet


class FlakyChain(LocalChain):
    """The local subnet, refusing the first ``failures`` weight submissions."""

    def __init__(self, folder, failures):
        super().__init__(folder)
        self.failures, self.attempts = failures, 0

    async def set_weights(self, wallet, weights):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("chain unreachable")
        await super().set_weights(wallet, weights)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    LocalChain.create(tmp_path / "chain", tempo=50, age_blocks=1000)
    wallet = make_wallet(tmp_path / "w", "v")
    LocalChain(tmp_path / "chain").register(wallet.hotkey.ss58_address, "c", stake=1,
                                            validator_permit=True, registered_at=0)
    return tmp_path, wallet


async def _no_sleep(_):
    return None


def validator(tmp_path, wallet, failures, retries=3):
    chain = FlakyChain(tmp_path / "chain", failures)
    return Validator(wallet, chain, open_store(str(tmp_path / "v.sqlite3")),
                     Settings(weight_retries=retries, check="off", tokenizers="tiny")), chain


def test_weights_are_retried_then_set_once_per_epoch(setup):
    tmp_path, wallet = setup
    v, chain = validator(tmp_path, wallet, failures=2)
    asyncio.run(v._set_weights(np.array([0.0, 0.25, 0.75])))
    assert chain.attempts == 3 and len(chain.weights_log()) == 1
    assert v.store.last_weights()[1] == {1: 0.25, 2: 0.75}
    asyncio.run(v._set_weights(np.array([0.0, 0.5, 0.5])))  # same epoch: not again
    assert chain.attempts == 3


def test_weights_give_up_after_the_retries(setup):
    tmp_path, wallet = setup
    v, chain = validator(tmp_path, wallet, failures=5, retries=3)
    asyncio.run(v._set_weights(np.array([1.0])))
    assert chain.attempts == 3 and chain.weights_log() == [] and v.store.last_weights() is None


def test_an_all_zero_table_is_never_set(setup):
    tmp_path, wallet = setup
    v, chain = validator(tmp_path, wallet, failures=0)
    asyncio.run(v._set_weights(np.zeros(4)))
    assert chain.attempts == 0


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
    store.record(RequestRecord(7, "hk", "inpaint", False, Outcome.OK, 20, 1.0, 1.0, 1010.0))
    store.record(RequestRecord(7, "hk", "inpaint", False, Outcome.RATE_LIMITED, 20, 0.1, None,
                               1020.0))
    store.record(RequestRecord(7, "hk", "inpaint", False, Outcome.OK, 20, 1.0, None, 5000.0))
    store.note_weights(2000, 0.0, {3: 1.0})
    text = status(store, 300)
    assert (
        "== period 7 == windows: block 2150 (60s, own view: reports cover 0% of stake)" in text
        and "in progress" in text
    )
    row = next(line for line in text.splitlines() if line.lstrip().startswith("3 inpaint"))
    # declared, budget, requests, window asked / good / demonstrated (400 x 1/2), other
    assert row.split()[2:9] == ["400", "100", "3", "40", "20", "200", "20"]
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
    assert first["windows"] == [{"block": 2150, "asked": 40.0, "good": 20.0, "served": 0.5,
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
