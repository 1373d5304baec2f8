"""The per-period table a validator prints: contenders, budgets, requests, outcomes, scores and
the weight each miner gets."""

from __future__ import annotations

from core.scoring import effective


def period_table(period: int, rows, vector) -> str:
    """``rows``: (target, PeriodOutcome, ContenderState, requests) per contender."""
    head = (f"{'uid':>3} {'task':<26} {'declared':>9} {'budget':>8} {'f':>5} {'audit':<11} "
            f"{'req':>4} {'consumed':>8} {'good':>7} {'429':>6} {'5xx':>6} {'score':>5} "
            f"{'quality':>7} {'credited':>8} {'effective':>9}")
    lines = [f"== period {period} ==", head]
    for t, o, s, n in sorted(rows, key=lambda r: (r[0].contender.uid, r[0].contender.task)):
        c = t.contender
        quality = f"{o.quality_sum / o.quality_n:.2f}" if o.quality_n else "-"
        lines.append(
            f"{c.uid:>3} {c.task:<26} {c.declared:>9.0f} {c.budget:>8.0f} {t.f:>5.2f} "
            f"{t.reason or '-':<11} {n:>4} {o.consumed:>8.0f} {o.good:>7.0f} {o.refused:>6.0f} "
            f"{o.failed:>6.0f} {o.score:>5.2f} {quality:>7} {s.credited:>8.0f} {effective(s):>9.1f}")
    shown = ", ".join(f"uid {uid}: {w:.3f}" for uid, w in enumerate(vector) if w > 0)
    lines.append(f"weights: {shown or 'none (nothing scored yet)'}")
    return "\n".join(lines)
