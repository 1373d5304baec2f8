"""What ``neurons/validator.py --status`` shows: the latest period from the database, scored with
the loop's own period close (``core.period.close_period``) while it is in progress, or as its
close stored it, with the weights its effective capacities give (the table's one ``weights:``
line) and, apart, the weights last set on chain; as the period table, or as JSON for scripts,
for every contender or only the uids and hotkeys asked for (one the period does not hold is an
``UnknownContender``)."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from core.errors import SetupError
from core.period import Closing, Row, close_period
from core.pooling import Pooling
from core.scoring import ContenderState, effective
from core.scoring import weights as weights_of
from core.storage import Store
from core.validator.measure import measure_period
from core.validator.period_table import period_table


class UnknownContender(SetupError):
    """A uid or hotkey asked for that has no contender in the period shown."""


@dataclass(frozen=True)
class Snapshot:
    """The latest period as --status shows it."""

    period: int
    finished: bool
    windows: list
    closing: Closing  # its rows: the contenders asked for
    scored: dict[int, Pooling]
    last: tuple[int, dict[int, float]] | None
    vector: np.ndarray  # the weights last set on chain, normalised
    period_weights: np.ndarray  # the period's: from every contender's effective capacity


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
    n_uids = max((c.uid for c in contenders), default=-1) + 1
    if finished:  # its close stored the states it computed: show those
        states = store.states()
        rows = []
        for c in contenders:
            key = (c.hotkey, c.task)
            state = states.get(key, ContenderState())
            outcome, requests = measured[key]
            rows.append(Row(c, outcome, state, requests, effective(state)))
        closing = Closing(states, weights_of({(r.contender.uid, r.contender.task): r.effective
                                              for r in rows}, n_uids), rows)
    else:  # what is recorded so far, scored by the loop's own close, nothing stored
        closing = close_period(contenders, {k: o for k, (o, _) in measured.items()},
                               store.states(), n_uids, {k: n for k, (_, n) in measured.items()})
    unknown = ([f"uid {u}" for u in uids if u not in {c.uid for c in contenders}]
               + [f"hotkey {h}" for h in hotkeys if h not in {c.hotkey for c in contenders}])
    if unknown:
        held = ", ".join(str(u) for u in sorted({c.uid for c in contenders})) or "none"
        raise UnknownContender(f"{', '.join(unknown)}: no contender in period {period} "
                               f"(its uids: {held})")
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
    return Snapshot(period, finished, windows, closing, scored, last, vector, shown_weights(
        closing))


def shown_weights(closing: Closing) -> np.ndarray:
    """The period's weights of the uids whose rows are shown (the others' are not in the
    table)."""
    vector = np.zeros_like(closing.weights)
    for r in closing.rows:
        if r.contender.uid < len(vector):
            vector[r.contender.uid] = closing.weights[r.contender.uid]
    return vector


def status(store: Store, period_blocks: int, uids: Collection[int] = (),
           hotkeys: Collection[str] = (), as_json: bool = False, history: bool = False) -> str:
    """The period table (with ``history``: each contender's last windows too), or JSON."""
    snap = snapshot(store, period_blocks, uids, hotkeys)
    if snap is None:
        return json.dumps({"period": None}) if as_json else "no period recorded yet"
    if as_json:
        data = _as_dict(snap.period, snap.finished, snap.windows, snap.scored, snap.closing,
                        snap.last, snap.vector)
        data["period_weights"] = {str(uid): float(w) for uid, w in enumerate(snap.period_weights)
                                  if w > 0}
        return json.dumps(data, indent=1)
    progress = ("finished: the weights above are the ones its close computed" if snap.finished
                else "in progress: the weights above are what it gives so far, from the "
                     "requests recorded")
    if snap.last:
        chain = ", ".join(f"uid {uid}: {w:.3f}" for uid, w in enumerate(snap.vector) if w > 0)
        set_at = f"weights last set on chain at block {snap.last[0]}: {chain or 'none'}"
    else:
        set_at = "no weights set on chain yet"
    table = period_table(snap.period, snap.windows, snap.closing, snap.period_weights,
                         snap.scored)
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
