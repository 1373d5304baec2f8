"""What ``neurons/validator.py --status`` shows: the latest period from the database, scored with
the loop's own period close (``core.period.close_period``) while it is in progress, or as its
close stored it, and the weights last set."""

from __future__ import annotations

import numpy as np

from core.period import Closing, Row, close_period
from core.scoring import ContenderState, effective
from core.storage import Store
from core.validator.measure import measure_period
from core.validator.report import period_table


def status(store: Store, period_blocks: int) -> str:
    period = store.latest_period()
    if period is None:
        return "no period recorded yet"
    contenders = store.contenders(period)
    windows = store.windows(period)
    measured, poolings = measure_period(store, period, contenders, period_blocks)
    info = store.period(period)
    finished = info is not None and info.finished
    if finished:  # its close stored the states it computed: show those
        states = store.states()
        rows = []
        for c in contenders:
            key = (c.hotkey, c.task)
            state = states.get(key, ContenderState())
            outcome, requests = measured[key]
            rows.append(Row(c, outcome, state, requests, effective(state)))
        closing = Closing(states, np.zeros(0), rows)
    else:  # what is recorded so far, scored by the loop's own close, nothing stored
        closing = close_period(contenders, {k: o for k, (o, _) in measured.items()},
                               store.states(), max((c.uid for c in contenders), default=-1) + 1,
                               {k: n for k, (_, n) in measured.items()})
    last = store.last_weights()
    weights = last[1] if last else {}
    vector = np.zeros(max(weights, default=-1) + 1)
    for uid, w in weights.items():
        vector[uid] = w
    if vector.sum() > 0:
        vector /= vector.sum()
    progress = "finished" if finished else "in progress"
    set_at = f"weights last set at block {last[0]}" if last else "no weights set yet"
    scored = store.poolings(period) if finished else {p.block: p for p in poolings}
    table = period_table(period, windows, closing, vector, scored)
    return f"{table}\n(period {progress}; {set_at})"
