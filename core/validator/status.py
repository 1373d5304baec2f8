"""What ``neurons/validator.py --status`` shows: the latest period from the database, per
contender (declared, budget, f, audit, requests, outcomes, period score, credited, effective),
and the weights last set."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from core.records import summarize
from core.scoring import ContenderState
from core.storage import Store
from core.validator.report import period_table


def status(store: Store) -> str:
    period = store.latest_period()
    if period is None:
        return "no period recorded yet"
    by_key = defaultdict(list)
    for r in store.records(period):
        by_key[(r.hotkey, r.task)].append(r)
    states = store.states()
    table = []
    for t in store.targets(period):
        key = (t.contender.hotkey, t.contender.task)
        outcome = summarize(by_key[key], t.contender.declared, t.contender.budget, t.f, t.audit)
        table.append((t, outcome, states.get(key, ContenderState()), len(by_key[key])))
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
