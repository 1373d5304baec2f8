"""What ``neurons/validator.py --status`` shows: the latest period from the database, scored with
the loop's own period close (``core.period.close_period``) while it is in progress, or as its
close stored it, and the weights last set; as the period table, or as JSON for scripts, for
every contender or only the uids and hotkeys asked for."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from core.period import Closing, Row, close_period
from core.pooling import Pooling
from core.scoring import ContenderState, effective
from core.storage import Store
from core.validator.measure import measure_period
from core.validator.report import period_table


@dataclass(frozen=True)
class Snapshot:
    """The latest period as --status shows it."""

    period: int
    finished: bool
    windows: list
    closing: Closing
    scored: dict[int, Pooling]
    last: tuple[int, dict[int, float]] | None
    vector: np.ndarray


def snapshot(store: Store, period_blocks: int, uids: Collection[int] = (),
             hotkeys: Collection[str] = ()) -> Snapshot | None:
    """``uids``, ``hotkeys``: only those contenders (none given: all); None before any period."""
    period = store.latest_period()
    if period is None:
        return None
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
    if uids or hotkeys:
        closing = Closing(closing.states, closing.weights,
                          [r for r in closing.rows if r.contender.uid in uids
                           or r.contender.hotkey in hotkeys])
    last = store.last_weights()
    weights = last[1] if last else {}
    vector = np.zeros(max(weights, default=-1) + 1)
    for uid, w in weights.items():
        vector[uid] = w
    if vector.sum() > 0:
        vector /= vector.sum()
    scored = store.poolings(period) if finished else {p.block: p for p in poolings}
    return Snapshot(period, finished, windows, closing, scored, last, vector)


def status(store: Store, period_blocks: int, uids: Collection[int] = (),
           hotkeys: Collection[str] = (), as_json: bool = False, history: bool = False) -> str:
    """The period table (with ``history``: each contender's last windows too), or JSON."""
    snap = snapshot(store, period_blocks, uids, hotkeys)
    if snap is None:
        return json.dumps({"period": None}) if as_json else "no period recorded yet"
    if as_json:
        return json.dumps(_as_dict(snap.period, snap.finished, snap.windows, snap.scored,
                                   snap.closing, snap.last, snap.vector), indent=1)
    progress = "finished" if snap.finished else "in progress"
    set_at = f"weights last set at block {snap.last[0]}" if snap.last else "no weights set yet"
    table = period_table(snap.period, snap.windows, snap.closing, snap.vector, snap.scored)
    out = f"{table}\n(period {progress}; {set_at})"
    if history:
        out += "\n\nlast windows, oldest first (score, then declared x served):"
        for r in sorted(snap.closing.rows, key=lambda r: (r.contender.uid, r.contender.task)):
            scores = " ".join(f"{score:.2f}" for _, score in r.state.scored) or "none"
            shown = " ".join(f"{d:g}" for d in r.state.demonstrated_w) or "none"
            out += (f"\nuid {r.contender.uid:>3} {r.contender.task:<28} scores {scores}"
                    f"\n{'':<37} shown  {shown}")
    return out


def _as_dict(period: int, finished: bool, windows, scored: dict[int, Pooling], closing: Closing,
             last, vector: np.ndarray) -> dict:
    def window(w) -> dict:
        p = scored.get(w.block)
        return {"block": w.block, "seconds": w.seconds,
                "pooled_from": list(p.used) if p else None,
                "coverage": p.coverage if p else None}

    def row(r: Row) -> dict:
        c, s = r.contender, r.state
        return {"uid": c.uid, "hotkey": c.hotkey, "task": c.task, "declared": c.declared,
                "budget": c.budget, "requests": r.requests,
                "windows": [{"block": w.block, "asked": w.tally.asked, "good": w.tally.good,
                             "served": w.served if w.tally.asked > 0 else None,
                             "pooled": w.pooled} for w in r.outcome.windows],
                "other_asked": r.outcome.other.asked, "score": s.period_score,
                "reliability": s.reliability, "quality": s.quality,
                "demonstrated": s.demonstrated, "credited": s.credited,
                "effective": r.effective,
                "history": {"windows": [{"asked": a, "score": sc} for a, sc in s.scored],
                            "demonstrated": list(s.demonstrated_w)}}

    return {"period": period, "finished": finished, "windows": [window(w) for w in windows],
            "contenders": [row(r) for r in sorted(closing.rows, key=lambda r: (r.contender.uid,
                                                                                r.contender.task))],
            "weights_set_at": last[0] if last else None,
            "weights": {str(uid): float(w) for uid, w in enumerate(vector) if w > 0}}
