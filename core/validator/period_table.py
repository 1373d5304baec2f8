"""The per-period table a validator prints (and ``--status`` shows): each contender's budget, what
each window of the period asked and got, what it demonstrated and is credited, and the weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from core.period import Closing, Row
from core.plan import Window
from core.pooling import Pooling


def _windows(row: Row) -> tuple[str, str, str]:
    """asked / good / demonstrated over the period's windows ("-" when none opened)."""
    ws = [w for w in row.outcome.windows if w.tally.asked > 0]
    if not ws:
        return "-", "-", "-"
    asked = sum(w.tally.asked for w in ws)
    good = sum(w.tally.good for w in ws)
    shown = min(row.outcome.declared * w.served for w in ws)
    return f"{asked:.0f}", f"{good:.0f}", f"{shown:.0f}"


def _window(w: Window, pooling: Pooling | None) -> str:
    """A window, and how it was scored: pooled from whose reports, or this validator's view."""
    if pooling is None:
        how = ""
    elif pooling.used:
        how = f", pooled: {len(pooling.used)} reports, {pooling.coverage:.0%} of stake"
    else:
        how = f", own view: reports cover {pooling.coverage:.0%} of stake"
    return f"block {w.block} ({w.seconds:.0f}s{how})"


def period_table(period: int, windows: Sequence[Window], closing: Closing,
                 weights: np.ndarray | None = None,
                 poolings: Mapping[int, Pooling] | None = None) -> str:
    """``weights``: the vector to show (default: the one the period computed); ``poolings``:
    how each window (by block) was scored."""
    vector = closing.weights if weights is None else weights
    poolings = poolings or {}
    opened = ", ".join(_window(w, poolings.get(w.block)) for w in windows) or "none"
    head = (f"{'uid':>3} {'task':<26} {'declared':>9} {'budget':>8} {'req':>4} {'w.asked':>8} "
            f"{'w.good':>7} {'w.shown':>8} {'other':>6} {'score':>5} {'reliab':>6} "
            f"{'quality':>7} {'demonstr':>8} {'credited':>8} {'effective':>9}")
    lines = [f"== period {period} == windows: {opened}", head]
    for r in sorted(closing.rows, key=lambda r: (r.contender.uid, r.contender.task)):
        c, s = r.contender, r.state
        asked, good, shown = _windows(r)
        lines.append(
            f"{c.uid:>3} {c.task:<26} {c.declared:>9.0f} {c.budget:>8.0f} {r.requests:>4} "
            f"{asked:>8} {good:>7} {shown:>8} {r.outcome.other.asked:>6.0f} "
            f"{s.period_score:>5.2f} {s.reliability:>6.2f} {s.quality:>7.2f} "
            f"{s.demonstrated:>8.0f} {s.credited:>8.0f} {r.effective:>9.1f}")
    shown_w = ", ".join(f"uid {uid}: {w:.3f}" for uid, w in enumerate(vector) if w > 0)
    lines.append(f"weights: {shown_w or 'none (nothing scored yet)'}")
    return "\n".join(lines)
