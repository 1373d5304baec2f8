"""A store's database that refuses every statement while told to, with the driver's own error
(as a full disk or a database that went away does), for the tests of what is kept meanwhile."""

from __future__ import annotations

from contextlib import contextmanager

from core.storage import Store


class FlakyDatabase:
    """Wraps a store's database; while ``refusing`` is set, every statement and transaction
    raises the database's own error class with ``message``."""

    def __init__(self, db, message: str = "database or disk is full"):
        self._db, self.message = db, message
        self.refusing = False
        self.refused = 0  # statements refused so far

    def __getattr__(self, name):  # name, errors, pool_size, lease, close, ...
        return getattr(self._db, name)

    def _check(self) -> None:
        if self.refusing:
            self.refused += 1
            raise self._db.errors[0](self.message)

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        self._check()
        return self._db.execute(sql, args)

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        self._check()
        self._db.executemany(sql, rows)

    @contextmanager
    def transaction(self):
        self._check()
        with self._db.transaction():
            yield


def make_flaky(store: Store, message: str = "database or disk is full") -> FlakyDatabase:
    """Put a FlakyDatabase under ``store`` and return it (to set ``refusing``)."""
    flaky = FlakyDatabase(store.db, message)
    store.db = flaky
    return flaky


def used_and_records(store: Store, period: int) -> dict[tuple[str, str], tuple[float, float]]:
    """Per contender of ``period``: (used, Σ units of its records), which must agree."""
    records = store.records(period)
    return {key: (used, sum(r.units for r in records if (r.hotkey, r.task) == key))
            for key, (_, used) in store.spent(period).items()}
