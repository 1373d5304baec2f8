"""Request records: one per request, written with the settlement of its reservation (late ones
land where ``core.spending.landing`` says), the quality of checked answers, and the reads the
event loop's rooms need without holding every record of a period in Python: a window's tallies
and those outside windows, summed by the database (``RecordRoom.tallied``), and one miner's
records (the ``requests_period`` index leads with period and hotkey)."""

from __future__ import annotations

from core.plan import SLICES, Window
from core.records import Outcome, RequestRecord, Tallied
from core.spending import landing
from core.storage.base import Room
from core.storage.periods import SETTLE

_COLUMNS = "period, hotkey, task, organic, outcome, units, latency_s, quality, at"


class RecordRoom(Room):
    def finish_requests(self, finished: list[tuple[RequestRecord, float, int | None]]
                        ) -> list[tuple[int, int]]:
        """Store each request's record and settle the ``reserved`` units it held in its period
        (its hold, by id, ends: ``reserve``), all in one transaction (one commit for requests
        that ended together: ``core.validator.recorder``); returns each (record id, period
        recorded in). A request that ends after its period was sealed for scoring (``seal``) is
        recorded where ``core.spending.landing`` says, and its units move there with it. One
        whose hold was given back (``release``: its process was taken for dead) counts its
        units in full."""
        out: list[tuple[int, int]] = []
        with self._guard(), self.db.transaction():
            landed: dict[int, int] = {}  # period asked -> period recorded in
            for r, reserved, held in finished:
                if held is not None and not self.db.execute(
                        "DELETE FROM held WHERE member = ? AND seq = ? RETURNING seq",
                        (self.member, held)):
                    reserved = 0.0  # given back already: nothing of it is counted
                if r.period not in landed:
                    landed[r.period] = landing(r.period, self._sealed_from(r.period))
                period = landed[r.period]
                if period != r.period:
                    self.db.execute(SETTLE, (-reserved, r.period, r.hotkey, r.task))
                    self.db.execute(SETTLE, (r.units, period, r.hotkey, r.task))
                elif r.units != reserved:
                    self.db.execute(SETTLE, (r.units - reserved, period, r.hotkey, r.task))
                rows = self.db.execute(
                    f"INSERT INTO requests ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "RETURNING id", (period, r.hotkey, r.task, int(r.organic), r.outcome.value,
                                     r.units, r.latency_s, r.quality, r.at))
                out.append((rows[0][0], period))
        return out

    def _sealed_from(self, period: int) -> dict[int, bool]:
        """Whether each begun period from ``period`` on is sealed (inside a transaction, which on
        PostgreSQL holds those rows against a concurrent ``seal``)."""
        return {p: bool(s) for p, s in self.db.execute(
            f"SELECT period, sealed FROM periods WHERE period >= ?{self.db.row_lock}", (period,))}

    def seal(self, period: int) -> None:
        """No record lands in ``period`` any more (its close reads them next): a request still
        running is recorded in the next period. Waits for records being written into it."""
        self._run("UPDATE periods SET sealed = 1 WHERE period = ?", (period,))

    def set_quality(self, record_id: int, quality: float, why: str | None = None) -> None:
        """A checked answer's quality, and why it failed its check (None: it passed). A check
        that ends after its record's period was sealed counts at the next close: in the period
        after the last sealed one (``late_checks``), never lost."""
        self._run("UPDATE requests SET quality = ?, why = ?, counted_in = CASE WHEN EXISTS "
                  "(SELECT 1 FROM periods p WHERE p.period = requests.period AND p.sealed = 1) "
                  "THEN (SELECT MAX(period) + 1 FROM periods WHERE sealed = 1) END WHERE id = ?",
                  (quality, why, record_id))

    def late_checks(self, period: int) -> list[tuple[str, str, float]]:
        """(hotkey, task, quality) of the checks of earlier periods' answers that ended after
        those periods were sealed and count at ``period``'s close."""
        return [(h, t, q) for h, t, q in self._run(
            "SELECT hotkey, task, quality FROM requests WHERE counted_in = ? ORDER BY id",
            (period,))]

    def failed_checks(self, period: int, hotkey: str) -> dict[str, dict[str, int]]:
        """Per task of ``hotkey``: how many of its answers in ``period`` failed their check, by
        reason."""
        out: dict[str, dict[str, int]] = {}
        for task, why, n in self._run(
                "SELECT task, why, COUNT(*) FROM requests WHERE period = ? AND hotkey = ? "
                "AND why IS NOT NULL GROUP BY task, why", (period, hotkey)):
            out.setdefault(task, {})[why] = n
        return out

    def records(self, period: int, hotkey: str | None = None) -> list[RequestRecord]:
        """The records of ``period`` in the order they were written, or only ``hotkey``'s."""
        sql = f"SELECT {_COLUMNS} FROM requests WHERE period = ?"
        args: tuple = (period,)
        if hotkey is not None:
            sql, args = sql + " AND hotkey = ?", (period, hotkey)
        with self._guard():
            return self.db.rows(sql + " ORDER BY id", args, _record)

    def tallied(self, first: int, last: int, since: float, until: float,
                window: Window | None = None) -> list[Tallied]:
        """The records of periods ``first`` to ``last`` sent in [``since``, ``until``), summed
        by contender and outcome, and with ``window``, by the window's slice too (as
        ``Window.slice_of`` places them: the same arithmetic, in the database's doubles)."""
        part, args = "NULL", ()  # type: str, tuple
        if window is not None:
            part = self.db.whole.format("(at - ?) / ? * ?")
            args = (window.started_at, window.seconds, SLICES)
        rows = self._run(
            f"SELECT hotkey, task, {part} AS part, outcome, SUM(units), COUNT(*) FROM requests "
            "WHERE period >= ? AND period <= ? AND at >= ? AND at < ? "
            "GROUP BY hotkey, task, part, outcome", args + (first, last, since, until))
        return [Tallied(h, t, None if i is None else min(int(i), SLICES - 1), Outcome(out),
                        units, n) for h, t, i, out, units, n in rows]


def _record(period: int, hotkey: str, task: str, organic: int, outcome: str, units: float,
            latency_s: float, quality: float | None, at: float) -> RequestRecord:
    return RequestRecord(period, hotkey, task, bool(organic), Outcome(outcome), units, latency_s,
                         quality, at)
