"""What a validator measured of each contender in a period (docs/protocol.md §2, §4, §9): its own
records, with each window scored from the pooled window reports when those it holds cover
enough of the permitted stake, else from its own view, against what each miner signed it
declared for the period. The period's close and ``--status`` both read it from the store, so a
restarted validator scores exactly what it had gathered. Each report also carries what its
validator asked of each contender outside windows since the window before; the period's reports
are pooled as windows are (``core.pooling.pool_outside``), so reliability agrees across
validators too.

The declarations settle two things at the close:

- **Equivocation.** A miner whose hotkey signed two different declarations for the period (its
  own one and one a peer's report carries, or two carried by peers: ``core.declaration``) told
  validators different things: its period is forfeited, every task of it declared 0 (credited
  0) with everything asked of it failed.
- **Silence.** A miner that gave this validator no declaration (no answer, or one that does not
  count) but gave one to a peer declared that one here too: silence is not a lower declaration.
  Its contenders take the declaration a peer carries (``unplanned`` adds those this validator
  never planned), so the pooled windows measure it by what it declared, and count the windows of
  every report without a row for it, this validator's own among them, as refused in full
  (``core.pooling.refused``); on this validator's own view its windows count as refused too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from core.budget import Contender
from core.budget import contenders as budgeted
from core.declaration import SignedDeclaration, equivocations
from core.metagraph import Metagraph
from core.pooling import Pooling, pool_outside, pool_window, refused, report_cap
from core.records import period_outcomes
from core.scoring import PeriodOutcome, forfeited, total
from core.storage import Store
from core.window_report import WindowReport

Key = tuple[str, str]
Measured = dict[Key, tuple[PeriodOutcome, int]]


@dataclass(frozen=True)
class Declared:
    """The signed declarations a validator holds for a period, by hotkey."""

    own: Mapping[str, SignedDeclaration]  # the miners gave this validator
    settled: Mapping[str, SignedDeclaration]  # own, else one a peer's report carries
    proofs: Mapping[str, tuple[SignedDeclaration, SignedDeclaration]]  # equivocations

    def silent(self, hotkey: str) -> bool:
        """Whether the miner gave this validator no declaration but a peer one."""
        return hotkey in self.settled and hotkey not in self.own

    def declared(self, c: Contender) -> Contender:
        """``c`` declaring what its miner signed for the period (0 for a task it left out)."""
        if c.hotkey not in self.settled:
            return c
        return replace(c, declared=self.settled[c.hotkey].declared().get(c.task, 0.0))


def declared_in(store: Store, period: int,
                held: Mapping[int, Mapping[str, WindowReport]]) -> Declared:
    """The declarations of ``period`` this validator got, and those the ``held`` reports carry
    (checked when fetched: ``core.validator.sharing``)."""
    own = store.declarations(period)
    carried = [d for reports in held.values() for r in reports.values() for d in r.declarations]
    return Declared(own, {**{d.hotkey: d for d in carried}, **own},
                    equivocations([*own.values(), *carried]))


def unplanned(held: Declared, planned: list[Contender], metagraph: Metagraph) -> list[Contender]:
    """Contenders of miners that were silent to this validator and declared to a peer: each
    task of the declaration a peer's report carries, with budget 0 (nothing was sent), for a
    miner of the period's ``metagraph`` this validator did not plan."""
    silent = {h: d.declared() for h, d in held.settled.items() if held.silent(h)}
    keys = {(c.hotkey, c.task) for c in planned}
    return [c for c in budgeted(metagraph, silent, 0.0) if (c.hotkey, c.task) not in keys]


def measure_period(store: Store, period: int, contenders: list[Contender], period_blocks: int,
                   pooled: bool = True) -> tuple[Measured, list[Pooling]]:
    """Every contender's (outcome, requests) and how each window was scored. ``pooled``: use
    the stored reports and the declarations they carry (else every window from this
    validator's own view, against the declarations it got)."""
    windows = store.windows(period)
    info = store.period(period)
    stakes = info.stakes if info else {}
    held = store.reports(period) if pooled else {}
    declared = declared_in(store, period, held)
    contenders = [declared.declared(c) for c in contenders]
    by_key = {(c.hotkey, c.task): c for c in contenders}

    measured = period_outcomes(contenders, store.records(period), windows)
    late_quality: dict[tuple[str, str], list[float]] = {}  # checks that ended after their close
    for hotkey, task, quality in store.late_checks(period):
        late_quality.setdefault((hotkey, task), []).append(quality)
    by_block, poolings = {}, []
    for w in windows:
        reports = {v: r.outcomes() for v, r in held.get(w.block, {}).items()}
        answered = {v: {d.hotkey for d in r.declarations}
                    for v, r in held.get(w.block, {}).items()}
        outcomes, pooling = pool_window(w.block, reports, contenders, stakes, period_blocks,
                                        answered)
        by_block[w.block] = outcomes
        poolings.append(pooling)
    share = info.share if info else 0.0
    # requests outside windows: each window's reports carry those since the window before, so
    # the pooled sum over the period's windows agrees across validators and misses none (those
    # after the period's last window, or in a period without one, are in a later report)
    outside = [{v: r.outside() for v, r in held.get(w.block, {}).items()} for w in windows]
    # ... and then never from this validator's own view (what no report pooled, no validator
    # scores), unless its period had windows and none of them could be pooled: it is alone
    shared_outside = pooled and (not windows or any(p.used for p in poolings))
    out = {}
    for key, (outcome, n) in measured.items():
        if shared_outside:
            outcome = replace(outcome, other=total([
                t for reports in outside
                if (t := pool_outside({v: o[key] for v, o in reports.items() if key in o},
                                      stakes, by_key[key].declared)) is not None]))
        c = by_key[key]
        quiet = declared.silent(c.hotkey) and c.declared > 0
        windows_seen = tuple(by_block.get(w.block, {}).get(key) or
                             (refused(w.block, report_cap(c, share, period_blocks)) if quiet
                              else w) for w in outcome.windows)
        outcome = replace(outcome, windows=windows_seen)
        late = late_quality.get(key)
        if late:
            outcome = replace(outcome, quality_sum=outcome.quality_sum + sum(late),
                              quality_n=outcome.quality_n + len(late))
        out[key] = (forfeited(outcome) if c.hotkey in declared.proofs else outcome, n)
    return out, poolings
