"""``neurons/validator.py --status``: one ``weights:`` line per period, the one its table's
effective capacities give; an unknown uid is an error naming it; the PNG has units and weights."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from core.budget import Contender
from core.plan import Window
from core.records import Outcome, RequestRecord
from core.scoring import ContenderState, weights
from core.storage import open_store
from core.validator.status import UnknownContender, snapshot, status
from devtools.localproc import ROOT
from tests.records import record

CONTENDERS = [Contender(1, "hk1", "chat-llama-3", 1000.0, 1000.0, 0),
              Contender(2, "hk2", "chat-llama-3", 500.0, 500.0, 0),
              Contender(2, "hk2", "inpaint", 40.0, 40.0, 0),
              Contender(3, "hk3", "inpaint", 40.0, 40.0, 0)]


@pytest.fixture
def store(tmp_path):
    store = open_store(str(tmp_path / "v.sqlite3"))
    store.begin_period(5, 1500, "0x1", 1.0, 0.0, CONTENDERS)
    store.finish_period(5, {
        ("hk1", "chat-llama-3"): ContenderState(declared=1000, demonstrated=800, credited=800,
                                                reliability=0.9, quality=1.0,
                                                demonstrated_w=(800.0,)),
        ("hk2", "chat-llama-3"): ContenderState(declared=500, demonstrated=500, credited=500,
                                                reliability=1.0, quality=0.8,
                                                demonstrated_w=(500.0,)),
        ("hk2", "inpaint"): ContenderState(declared=40, demonstrated=30, credited=30,
                                           reliability=0.7, quality=1.0, demonstrated_w=(30.0,)),
        ("hk3", "inpaint"): ContenderState(declared=40, demonstrated=40, credited=40,
                                           reliability=1.0, quality=1.0, demonstrated_w=(40.0,))})
    store.note_weights(1490, 0.0, {3: 1.0})  # an earlier period's vector, on chain
    yield store
    store.close()


def table_weights(text: str) -> dict[int, float]:
    """The table's effective column, weighted as the validator weighs it."""
    effective = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 15 and parts[0].isdigit():
            effective[(int(parts[0]), parts[1])] = float(parts[-1])
    vector = weights(effective, 4)
    return {uid: round(float(w), 3) for uid, w in enumerate(vector) if w > 0}


def printed_weights(text: str) -> dict[int, float]:
    [line] = [line for line in text.splitlines() if line.startswith("weights:")]
    return {int(part.split(":")[0].split()[1]): float(part.split(":")[1])
            for part in line.removeprefix("weights:").split(",")}


def test_one_weights_line_that_agrees_with_the_table_finished_and_in_progress(store):
    text = status(store, 300)
    assert text.count("weights:") == 1
    assert printed_weights(text) == pytest.approx(table_weights(text), abs=1e-3)
    assert "weights last set on chain at block 1490: uid 3: 1.000" in text  # apart, labelled
    # the next period in progress: its own figures, still one line, still the table's
    store.begin_period(6, 1800, "0x2", 1.0, 0.0, CONTENDERS)
    store.add_window(6, Window(1850, 1000.0, 60.0))
    for at in (1001.0, 1013.0, 1025.0, 1037.0, 1049.0):
        record(store, RequestRecord(6, "hk1", "chat-llama-3", False, Outcome.TIMEOUT, 50, 9.0,
                                   None, at))
        record(store, RequestRecord(6, "hk2", "chat-llama-3", False, Outcome.OK, 50, 1.0, None, at))
    running = status(store, 300)
    assert "== period 6 ==" in running and running.count("weights:") == 1
    assert printed_weights(running) == pytest.approx(table_weights(running), abs=1e-3)
    assert printed_weights(running) != printed_weights(text)  # period 6's, not 5's
    # only uid 2's rows: its weight is the same share of the whole period's vector
    only = status(store, 300, uids=[2])
    assert set(printed_weights(only)) == {2}
    assert printed_weights(only)[2] == printed_weights(running)[2]


def test_an_unknown_uid_is_an_error_naming_it(store, tmp_path):
    with pytest.raises(UnknownContender, match="uid 99"):
        status(store, 300, uids=[1, 99])
    run = subprocess.run([sys.executable, "neurons/validator.py", "--status", "--db",
                          str(tmp_path / "v.sqlite3"), "--uid", "99"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stdout == ""
    assert "uid 99: no contender in period 5 (its uids: 1, 2, 3)" in run.stderr


def test_the_picture_has_units_on_its_axes_and_the_weights(store, tmp_path):
    pytest.importorskip("matplotlib")
    from core.validator.picture import period_figure, period_png

    snap = snapshot(store, 300)
    assert snap is not None
    fig = period_figure(snap)
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert "capacity (tokens per period)" in labels and "capacity (steps per period)" in labels
    assert any(label.startswith("weight (") for label in labels)
    panel = next(ax for ax in fig.axes if ax.get_title(loc="left") == "weights")
    written = {t.get_text() for t in panel.texts}
    assert written == {f"{w:.3f}" for w in snap.period_weights[1:]}
    assert np.isclose(snap.period_weights.sum(), 1.0)
    # room for every bar: at least ROW_IN inch per contender of each task
    width, height = fig.get_size_inches()
    assert height >= 0.75 * len(CONTENDERS) and width >= 10
    assert period_png(snap, tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")
