"""What ``neurons/validator.py --status`` shows: the latest period from the database, per
contender (declared, budget, f, audit, requests, outcomes, period score, credited, effective),
and the weights last set."""

from __future__ import annotations

import numpy as np

from core.records import period_outcomes
from core.scoring import ContenderState
from core.storage import Store
from core.validator.report import period_table


def status(store: Store) -> str:
    period = store.latest_period()
    if period is None:
        return "no period recorded yet"
    states = store.states()
    table = [(t, outcome, states.get((t.contender.hotkey, t.contender.task), ContenderState()), n)
             for t, outcome, n in period_outcomes(store.targets(period), store.records(period))]
    last = store.last_weights()
    weights = last[1] if last else {}
    vector = np.zeros(max(weights, default=-1) + 1)
    for uid, w in weights.items():
        vector[uid] = w
    if vector.sum() > 0:
        vector /= vector.sum()
    info = store.period(period)
    state = "finished" if info["finished"] else "in progress"
    set_at = f"weights last set at block {last[0]}" if last else "no weights set yet"
    return f"{period_table(period, table, vector)}\n(period {state}; {set_at})"
