"""What the validator stores, over either database: periods and their plans, request records,
window reports, contender states and the weights set. Every write commits before it returns."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Protocol, TypeVar

from core.budget import Contender
from core.declaration import SignedDeclaration
from core.plan import Window
from core.pooling import Pooling
from core.records import Outcome, RequestRecord
from core.scoring import ContenderState
from core.storage.schema import MIGRATIONS
from core.window_report import WindowReport

T = TypeVar("T")
_SETTLE = "UPDATE targets SET used = used + ? WHERE period = ? AND hotkey = ? AND task = ?"
_ADD_TARGETS = ("INSERT INTO targets (period, uid, hotkey, task, declared, budget, registered_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (period, hotkey, task) DO NOTHING")


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


@dataclass(frozen=True)
class ApiKey:
    """An organic API key as stored: never the key itself, only its hash (not returned here)."""

    name: str
    prefix: str  # the first characters, to tell keys apart in lists and logs
    per_minute: int
    created_at: float
    revoked_at: float | None


STATE_VERSION = 1  # the shape of a stored ContenderState; a state of another version is refused


class StorageError(Exception):
    """The database refused a read or write; the message names it and says why."""


class Database(Protocol):
    name: str
    auto_id: str
    row_lock: str  # appended to a SELECT that must wait for a concurrent update of its rows
    errors: tuple[type[Exception], ...]
    blocking: bool  # a call waits on the network (``Store.io`` runs it in a thread)
    pool_size: int  # calls that may run at once from threads

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]: ...

    def executemany(self, sql: str, rows: list[tuple]) -> None: ...

    def transaction(self): ...

    def close(self) -> None: ...

    def lease(self, name: str) -> Lease: ...


class Lease(Protocol):
    """Work only one process sharing the database may do at a time (the period loop)."""

    def acquire(self) -> bool: ...

    def held(self) -> bool: ...

    def release(self) -> None: ...


class Store:
    def __init__(self, db: Database):
        self.db = db
        self.version = self.migrate()
        self._threads: ThreadPoolExecutor | None = None
        self._api_use_pruned = -1  # the minute whose predecessors' API use was last dropped

    async def io(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)``, a call of this store, from a coroutine without holding its event loop
        on a database across a network: on PostgreSQL in a thread (on a pooled connection of its
        own); on SQLite at once, as a local commit (~20 µs) costs less than the hop to a thread.
        A caller cancelled while it waits leaves the call to finish: a record is still written."""
        if not self.db.blocking:
            return fn(*args)
        return await self.off_loop(fn, *args)

    async def off_loop(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` in one of the store's threads whatever the database: for a batch of
        writes (``core.validator.recorder``), whose transaction on SQLite is worth the hop: the
        sqlite3 module lets the event loop run while it writes."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.db.pool_size, thread_name_prefix="store")
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    @contextmanager
    def _guard(self):
        try:
            yield
        except self.db.errors as e:
            raise StorageError(f"{self.db.name}: {type(e).__name__}: {e}") from None

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._guard():
            return self.db.execute(sql, args)

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction; returns the schema version."""
        with self._guard():
            self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = self.db.execute("SELECT MAX(version) FROM schema_version")
            version = rows[0][0] or 0
            if version > len(MIGRATIONS):
                raise StorageError(f"{self.db.name}: schema v{version} is newer than this code "
                                   f"(v{len(MIGRATIONS)}); upgrade the validator")
            for i in range(version, len(MIGRATIONS)):
                with self.db.transaction():
                    for statement in MIGRATIONS[i]:
                        self.db.execute(statement.replace("{id}", self.db.auto_id))
                    self.db.execute("INSERT INTO schema_version VALUES (?)", (i + 1,))
        return len(MIGRATIONS)

    # -- periods and their plans --

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
            self.rederive_used(period)  # requests recorded here before it began (finish_request)

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

    # -- window reports: this validator's own and those fetched from the others --

    def add_report(self, period: int, report: WindowReport, at: float) -> bool:
        """Keep a report (the first one of a validator for a window stays); True if new."""
        rows = self._run("INSERT INTO reports VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT (block, validator) DO NOTHING RETURNING block",
                         (period, report.block, report.validator, report.model_dump_json(), at))
        return bool(rows)

    def report(self, block: int, validator: str) -> WindowReport | None:
        rows = self._run("SELECT body FROM reports WHERE block = ? AND validator = ?",
                         (block, validator))
        return WindowReport.model_validate_json(rows[0][0]) if rows else None

    def reports(self, period: int) -> dict[int, dict[str, WindowReport]]:
        """Every report held for ``period``'s windows: by window block, then validator."""
        out: dict[int, dict[str, WindowReport]] = {}
        for block, validator, body in self._run(
                "SELECT block, validator, body FROM reports WHERE period = ?", (period,)):
            out.setdefault(block, {})[validator] = WindowReport.model_validate_json(body)
        return out

    # -- budgets: what each contender of a period has spent, shared by every replica --

    def reserve(self, period: int, hotkey: str, task: str, units: float,
                cap: float | None = None) -> bool:
        """Spend ``units`` of the contender's budget if they fit in it (and its use so far is
        under ``cap``), in one statement: concurrent replicas never spend beyond the budget."""
        limit, args = "", (units, period, hotkey, task, units)  # type: tuple[str, tuple]
        if cap is not None:
            limit, args = " AND used < ?", args + (cap,)
        rows = self._run("UPDATE targets SET used = used + ? WHERE period = ? AND hotkey = ? "
                         f"AND task = ? AND used + ? <= budget{limit} RETURNING used", args)
        return bool(rows)

    def settle(self, period: int, hotkey: str, task: str, delta: float) -> None:
        """Correct a reservation by what the request really used (``delta`` may be negative)."""
        self._run(_SETTLE, (delta, period, hotkey, task))

    def spent(self, period: int, task: str | None = None
              ) -> dict[tuple[str, str], tuple[float, float]]:
        """(budget, used) per (hotkey, task) of the period, or of one task in it."""
        sql = "SELECT hotkey, task, budget, used FROM targets WHERE period = ?"
        args: tuple = (period,)
        if task is not None:
            sql, args = sql + " AND task = ?", (period, task)
        return {(hk, t): (budget, used) for hk, t, budget, used in self._run(sql, args)}

    def rederive_used(self, period: int) -> None:
        """Set every contender's ``used`` to the units of its records: after a crash, the
        reservations of requests that never finished are not counted as spent."""
        self._run("UPDATE targets SET used = (SELECT COALESCE(SUM(r.units), 0) FROM requests r "
                  "WHERE r.period = targets.period AND r.hotkey = targets.hotkey "
                  "AND r.task = targets.task) WHERE period = ?", (period,))

    # -- requests --

    def finish_request(self, r: RequestRecord, reserved: float) -> tuple[int, int]:
        """Store a request's record and settle the ``reserved`` units it held in ``r.period``, in
        one transaction; returns (record id, period recorded in).

        A request that ends after its period was sealed for scoring (``seal``) is recorded in the
        first period not sealed yet, and its units move there with it, so every record lands in a
        period that is scored and each period's ``used`` stays the sum of its records."""
        return self.finish_requests([(r, reserved)])[0]

    def finish_requests(self, finished: list[tuple[RequestRecord, float]]
                        ) -> list[tuple[int, int]]:
        """``finish_request`` for each (record, reserved), all in one transaction (one commit for
        requests that ended together: ``core.validator.recorder``)."""
        out: list[tuple[int, int]] = []
        with self._guard(), self.db.transaction():
            landing: dict[int, int] = {}  # period asked -> period recorded in
            for r, reserved in finished:
                if r.period not in landing:
                    landing[r.period] = self._landing(r.period)
                period = landing[r.period]
                if period != r.period:
                    self.db.execute(_SETTLE, (-reserved, r.period, r.hotkey, r.task))
                    self.db.execute(_SETTLE, (r.units, period, r.hotkey, r.task))
                elif r.units != reserved:
                    self.db.execute(_SETTLE, (r.units - reserved, period, r.hotkey, r.task))
                rows = self.db.execute(
                    "INSERT INTO requests (period, hotkey, task, organic, outcome, units, "
                    "latency_s, quality, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (period, r.hotkey, r.task, int(r.organic), r.outcome.value, r.units,
                     r.latency_s, r.quality, r.at))
                out.append((rows[0][0], period))
        return out

    def _landing(self, period: int) -> int:
        """Where a record of ``period`` lands (inside a transaction, which on PostgreSQL holds the
        period's row against a concurrent ``seal``): ``period`` itself until it is sealed."""
        sealed = self.db.execute(
            f"SELECT sealed FROM periods WHERE period = ?{self.db.row_lock}", (period,))
        if not (sealed and sealed[0][0]):
            return period
        return self.db.execute(
            "SELECT COALESCE(MIN(p.period), ?) FROM periods p WHERE p.period > ? AND "
            "p.sealed = 0", (self._after_sealed(period), period))[0][0]

    def record(self, r: RequestRecord) -> int:
        """Store a record whose units were reserved as they are (nothing to settle)."""
        return self.finish_request(r, r.units)[0]

    def _after_sealed(self, period: int) -> int:
        """The period after the last sealed one from ``period`` on: where a late record goes when
        no later period is open yet (``begin_period`` counts it in when that one begins)."""
        return self.db.execute("SELECT MAX(period) FROM periods WHERE sealed = 1 AND period >= ?",
                               (period,))[0][0] + 1

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

    def records(self, period: int) -> list[RequestRecord]:
        rows = self._run("SELECT period, hotkey, task, organic, outcome, units, latency_s, "
                         "quality, at FROM requests WHERE period = ? ORDER BY id", (period,))
        return [RequestRecord(p, h, t, bool(o), Outcome(out), u, lat, q, at)
                for p, h, t, o, out, u, lat, q, at in rows]

    # -- contender states --

    def finish_period(self, period: int, states: dict[tuple[str, str], ContenderState]) -> None:
        """Store every contender's new state and mark the period done, in one transaction."""
        rows = [(hk, task, period, json.dumps({"version": STATE_VERSION, **asdict(s)}))
                for (hk, task), s in states.items()]
        with self._guard(), self.db.transaction():
            self.db.executemany(
                "INSERT INTO states VALUES (?, ?, ?, ?) ON CONFLICT (hotkey, task) "
                "DO UPDATE SET period = excluded.period, state = excluded.state", rows)
            self.db.execute("UPDATE periods SET finished = 1 WHERE period = ?", (period,))

    def states(self) -> dict[tuple[str, str], ContenderState]:
        out = {}
        for hotkey, task, raw in self._run("SELECT hotkey, task, state FROM states"):
            d = json.loads(raw)
            version = d.pop("version", 1)  # states written before versions were version 1
            if version != STATE_VERSION:
                raise StorageError(f"the state of {hotkey} {task} is of version {version}; this "
                                   f"validator reads version {STATE_VERSION}: upgrade it")
            for name in ("demonstrated_w", "scored", "other", "checks"):
                d[name] = tuple(tuple(x) if isinstance(x, list) else x for x in d[name])
            out[(hotkey, task)] = ContenderState(**d)
        return out

    # -- weights --

    def note_weights(self, block: int, at: float, weights: dict[int, float],
                     reveal_round: int | None = None) -> None:
        """A vector sent at ``block``: set, or committed (to be revealed at ``reveal_round``)."""
        self._run("INSERT INTO weights_set VALUES (?, ?, ?, ?, ?)",
                  (block, at, json.dumps(weights), "set" if reveal_round is None else "committed",
                   reveal_round))

    def pending_commit(self) -> tuple[int, dict[int, float], int] | None:
        """The latest vector committed and not yet seen revealed: its block, weights, round."""
        rows = self._run("SELECT block, weights, status, reveal_round FROM weights_set "
                         "ORDER BY block DESC LIMIT 1")
        if not rows or rows[0][2] != "committed":
            return None
        return rows[0][0], {int(k): v for k, v in json.loads(rows[0][1]).items()}, rows[0][3]

    def note_revealed(self, block: int) -> None:
        self._run("UPDATE weights_set SET status = 'revealed' WHERE block = ?", (block,))

    def last_weights(self) -> tuple[int, dict[int, float]] | None:
        """The block and weights of the latest vector set."""
        rows = self._run("SELECT block, weights FROM weights_set ORDER BY block DESC LIMIT 1")
        if not rows:
            return None
        return rows[0][0], {int(k): v for k, v in json.loads(rows[0][1]).items()}

    # -- API keys (only their hashes) --

    def add_api_key(self, name: str, prefix: str, digest: str, per_minute: int, at: float) -> bool:
        """False when a key of that name exists already (one statement: two processes creating
        the same name cannot both succeed)."""
        return bool(self._run("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL) "
                              "ON CONFLICT (name) DO NOTHING RETURNING name",
                              (name, prefix, digest, per_minute, at)))

    def revoke_api_key(self, name: str, at: float) -> bool:
        """False when there is no live key of that name."""
        return bool(self._run("UPDATE api_keys SET revoked_at = ? "
                              "WHERE name = ? AND revoked_at IS NULL RETURNING name", (at, name)))

    def api_keys(self, digest: str | None = None) -> list[ApiKey]:
        """Every key, or the live one with this digest."""
        columns = "SELECT name, prefix, per_minute, created_at, revoked_at FROM api_keys"
        if digest is None:
            rows = self._run(f"{columns} ORDER BY created_at")
        else:
            rows = self._run(f"{columns} WHERE hash = ? AND revoked_at IS NULL", (digest,))
        return [ApiKey(*row) for row in rows]

    def count_api_use(self, name: str, minute: int) -> int:
        """Count one request of key ``name`` in ``minute`` (one statement: replicas sharing the
        database count together); returns the minute's count so far, this one included. Past
        minutes are dropped once a minute, not with every request (it was a transaction of
        three statements per organic request)."""
        if minute != self._api_use_pruned:
            self._run("DELETE FROM api_use WHERE minute < ?", (minute - 1,))
            self._api_use_pruned = minute
        rows = self._run("INSERT INTO api_use VALUES (?, ?, 1) ON CONFLICT (name, minute) "
                         "DO UPDATE SET used = api_use.used + 1 RETURNING used", (name, minute))
        return rows[0][0]

    def prune(self, before_period: int) -> None:
        """Drop request records and plans older than the retention window."""
        with self._guard(), self.db.transaction():
            for table in ("requests", "targets", "windows", "reports", "declarations",
                          "periods"):
                self.db.execute(f"DELETE FROM {table} WHERE period < ?", (before_period,))

    def lease(self, name: str) -> Lease:
        """The lease named ``name`` among the processes sharing this database."""
        return self.db.lease(name)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)  # the calls under way end (their records written)
        self.db.close()


def _target_rows(period: int, contenders: Iterable[Contender]) -> list[tuple]:
    return [(period, c.uid, c.hotkey, c.task, c.declared, c.budget, c.registered_at)
            for c in contenders]
