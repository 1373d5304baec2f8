"""Periods and their budgets: each period as begun (its budgets, the stakes its window reports
are pooled by, the declarations the miners signed for it), its windows and how each was scored,
and what each contender's budget has spent, shared by every replica on the database."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.budget import Contender
from core.declaration import SignedDeclaration
from core.plan import Window
from core.pooling import Pooling
from core.storage.base import Room

SETTLE = "UPDATE targets SET used = used + ? WHERE period = ? AND hotkey = ? AND task = ?"
_USED_FROM_RECORDS = ("UPDATE targets SET used = (SELECT COALESCE(SUM(r.units), 0) FROM requests r "
                      "WHERE r.period = targets.period AND r.hotkey = targets.hotkey "
                      "AND r.task = targets.task) WHERE period = ?")
_ADD_TARGETS = ("INSERT INTO targets (period, uid, hotkey, task, declared, budget, registered_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (period, hotkey, task) DO NOTHING")
# ``core.spending.admits`` as a condition on a contender's row: the units, then the cap if any
_ADMITS = "used + ? <= budget"
_UNDER_CAP = " AND used < ?"


@dataclass(frozen=True)
class PeriodInfo:
    """A period as begun: its start block and hash, this validator's stake share, when it
    began, whether its close is stored, and the permitted validators' stakes at its start."""

    block: int
    block_hash: str
    share: float
    started_at: float
    finished: bool
    stakes: dict[str, float]


class PeriodRoom(Room):
    def begin_period(self, period: int, block: int, block_hash: str, share: float,
                     started_at: float, contenders: list[Contender],
                     stakes: Mapping[str, float] | None = None,
                     declarations: Iterable[SignedDeclaration] = ()) -> None:
        """Store a period's budgets, the permitted validators' ``stakes`` its window reports
        are pooled by, and the signed ``declarations`` the miners gave this validator for it, in
        one transaction: a restart finds all of them or none."""
        with self._guard(), self.db.transaction():
            self.db.execute("INSERT INTO periods (period, block, block_hash, share, started_at, "
                            "finished, stakes) VALUES (?, ?, ?, ?, ?, 0, ?) "
                            "ON CONFLICT (period) DO NOTHING",
                            (period, block, block_hash, share, started_at,
                             json.dumps(dict(stakes or {}))))
            self.db.executemany(_ADD_TARGETS, _target_rows(period, contenders))
            self.db.executemany(
                "INSERT INTO declarations VALUES (?, ?, ?) ON CONFLICT (period, hotkey) DO NOTHING",
                [(period, d.hotkey, d.model_dump_json()) for d in declarations])
            # requests recorded here before it began (late records); nothing is held in it yet
            self.db.execute(_USED_FROM_RECORDS, (period,))

    def add_contenders(self, period: int, contenders: list[Contender]) -> None:
        """Contenders of a begun period it did not plan (those found at its close: a miner
        silent to this validator that declared to others, ``core.validator.measure``); one
        already there stays as it is."""
        with self._guard(), self.db.transaction():
            self.db.executemany(_ADD_TARGETS, _target_rows(period, contenders))

    def declarations(self, period: int) -> dict[str, SignedDeclaration]:
        """The signed declarations the miners gave this validator for ``period``, by hotkey."""
        rows = self._run("SELECT hotkey, body FROM declarations WHERE period = ?", (period,))
        return {hotkey: SignedDeclaration.model_validate_json(body) for hotkey, body in rows}

    def period(self, period: int) -> PeriodInfo | None:
        rows = self._run("SELECT block, block_hash, share, started_at, finished, stakes "
                         "FROM periods WHERE period = ?", (period,))
        if not rows:
            return None
        block, block_hash, share, started_at, finished, stakes = rows[0]
        return PeriodInfo(block, block_hash, share, started_at, bool(finished), json.loads(stakes))

    def unfinished(self, before: int) -> list[int]:
        """Periods begun but never closed (the validator stopped in them), oldest first."""
        rows = self._run("SELECT period FROM periods WHERE finished = 0 AND period < ? "
                         "ORDER BY period", (before,))
        return [r[0] for r in rows]

    def latest_period(self) -> int | None:
        return self._run("SELECT MAX(period) FROM periods")[0][0]

    def last_finished(self, after: int) -> int | None:
        """The latest period after ``after`` whose close is stored (None: none is)."""
        return self._run("SELECT MAX(period) FROM periods WHERE finished = 1 AND period > ?",
                         (after,))[0][0]

    def contenders(self, period: int) -> list[Contender]:
        rows = self._run("SELECT uid, hotkey, task, declared, budget, registered_at FROM targets "
                         "WHERE period = ? ORDER BY uid, task", (period,))
        return [Contender(*row) for row in rows]

    def add_window(self, period: int, window: Window) -> Window:
        """Note a window of ``period`` as it opens; a window noted before (a restart in it)
        keeps its first start time. Returns the window as stored."""
        self._run("INSERT INTO windows (period, block, started_at, seconds) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (period, block) DO NOTHING",
                  (period, window.block, window.started_at, window.seconds))
        return next(w for w in self.windows(period) if w.block == window.block)

    def windows(self, period: int) -> list[Window]:
        """The windows of ``period`` the validator ran, in order."""
        rows = self._run("SELECT block, started_at, seconds FROM windows WHERE period = ? "
                         "ORDER BY block", (period,))
        return [Window(*row) for row in rows]

    def note_pooling(self, period: int, pooling: Pooling) -> None:
        """How a window of ``period`` was scored (``core.pooling.Pooling``)."""
        self._run("UPDATE windows SET coverage = ?, pooled_from = ? WHERE period = ? AND block = ?",
                  (pooling.coverage, json.dumps(list(pooling.used)), period, pooling.block))

    def poolings(self, period: int) -> dict[int, Pooling]:
        """How each window of ``period`` was scored, for the windows its close has scored."""
        rows = self._run("SELECT block, coverage, pooled_from FROM windows WHERE period = ? "
                         "AND coverage IS NOT NULL", (period,))
        return {b: Pooling(b, c, tuple(json.loads(used))) for b, c, used in rows}

    # -- budgets: what each contender of a period has spent, shared by every replica --

    def reserve(self, period: int, hotkey: str, task: str, units: float,
                cap: float | None = None) -> int | None:
        """Spend ``units`` of the contender's budget if ``core.spending.admits`` them, in one
        statement (concurrent replicas never spend beyond the budget), and note them held by
        this process (``member``) until the request's record settles them
        (``finish_requests``): the hold's number, or None when the budget does not admit them."""
        condition, args = _ADMITS, (units, period, hotkey, task, units)  # type: str, tuple
        if cap is not None:
            condition, args = condition + _UNDER_CAP, args + (cap,)
        spend = (f"UPDATE targets SET used = used + ? WHERE period = ? AND hotkey = ? AND "
                 f"task = ? AND {condition} RETURNING period")
        seq = next(self.holds)
        hold = (self.member, seq, period, hotkey, task, units)
        if self.db.writing_with:
            rows = self._run(f"WITH spent AS ({spend}) INSERT INTO held (member, seq, period, "
                             "hotkey, task, units) SELECT ?, ?, ?, ?, ?, ? FROM spent "
                             "RETURNING seq", args + hold)
            return seq if rows else None
        with self._guard(), self.db.transaction():
            if not self.db.execute(spend, args):
                return None
            self.db.execute("INSERT INTO held (member, seq, period, hotkey, task, units) "
                            "VALUES (?, ?, ?, ?, ?, ?)", hold)
        return seq

    def settle(self, period: int, hotkey: str, task: str, delta: float) -> None:
        """Correct a reservation by what the request really used (``delta`` may be negative)."""
        self._run(SETTLE, (delta, period, hotkey, task))

    def spent(self, period: int, task: str | None = None
              ) -> dict[tuple[str, str], tuple[float, float]]:
        """(budget, used) per (hotkey, task) of the period, or of one task in it."""
        sql = "SELECT hotkey, task, budget, used FROM targets WHERE period = ?"
        args: tuple = (period,)
        if task is not None:
            sql, args = sql + " AND task = ?", (period, task)
        return {(hk, t): (budget, used) for hk, t, budget, used in self._run(sql, args)}

    def holders(self) -> set[str]:
        """The processes holding reservations of requests not recorded yet."""
        return {m for (m,) in self._run("SELECT DISTINCT member FROM held")}

    def release(self, members: Iterable[str]) -> float:
        """Give back what ``members`` (processes known dead, or cut off) hold, in every period:
        their requests never settled, so their units are not spent. A record of one of those
        requests that arrives after all (a process that was cut off, not dead) then counts its
        units in full (``finish_requests``): ``used == Σ records`` whatever the order. Returns
        the units given back."""
        members = sorted(set(members))
        if not members:
            return 0.0
        among = ", ".join("?" * len(members))
        given: dict[tuple[int, str, str], float] = {}
        with self._guard(), self.db.transaction():
            # one statement takes the holds: a record ending one at the same moment either
            # ends it first (and it is not given back) or finds it gone (and counts in full)
            for period, hotkey, task, units in self.db.execute(
                    f"DELETE FROM held WHERE member IN ({among}) RETURNING period, hotkey, "
                    "task, units", tuple(members)):
                key = (period, hotkey, task)
                given[key] = given.get(key, 0.0) + units
            for (period, hotkey, task), units in given.items():
                self.db.execute(SETTLE, (-units, period, hotkey, task))
        return sum(given.values())

    def prune(self, before_period: int) -> None:
        """Drop request records and plans older than the retention window, and the processes
        not seen since the oldest period kept began."""
        with self._guard(), self.db.transaction():
            self.db.execute("DELETE FROM senders WHERE seen < (SELECT COALESCE(MIN(started_at), "
                            "0) FROM periods WHERE period >= ?)", (before_period,))
            for table in ("requests", "held", "targets", "windows", "window_senders", "reports",
                          "declarations", "periods"):
                self.db.execute(f"DELETE FROM {table} WHERE period < ?", (before_period,))


def _target_rows(period: int, contenders: Iterable[Contender]) -> list[tuple]:
    return [(period, c.uid, c.hotkey, c.task, c.declared, c.budget, c.registered_at)
            for c in contenders]
