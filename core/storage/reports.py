"""Window reports: this validator's own of each window and those fetched from the others
(docs/protocol.md §9), each kept as first received."""

from __future__ import annotations

from core.storage.base import Room
from core.window_report import WindowReport


class ReportRoom(Room):
    def add_report(self, period: int, report: WindowReport, at: float) -> bool:
        """Keep a report (the first one of a validator for a window stays); True if new."""
        rows = self._run("INSERT INTO reports VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT (block, validator) DO NOTHING RETURNING block",
                         (period, report.block, report.validator, report.model_dump_json(), at))
        return bool(rows)

    def report(self, block: int, validator: str) -> WindowReport | None:
        body = self.report_body(block, validator)
        return None if body is None else WindowReport.model_validate_json(body)

    def report_body(self, block: int, validator: str) -> str | None:
        """A report as stored (its JSON), to serve it without parsing it again."""
        rows = self._run("SELECT body FROM reports WHERE block = ? AND validator = ?",
                         (block, validator))
        return rows[0][0] if rows else None

    def reports(self, period: int) -> dict[int, dict[str, WindowReport]]:
        """Every report held for ``period``'s windows: by window block, then validator."""
        out: dict[int, dict[str, WindowReport]] = {}
        for block, validator, body in self._run(
                "SELECT block, validator, body FROM reports WHERE period = ?", (period,)):
            out.setdefault(block, {})[validator] = WindowReport.model_validate_json(body)
        return out

    def reporters(self, block: int) -> set[str]:
        """The validators whose report of the window at ``block`` is held (none parsed: what a
        fetching round asks before it goes)."""
        return {v for (v,) in self._run("SELECT validator FROM reports WHERE block = ?",
                                        (block,))}
