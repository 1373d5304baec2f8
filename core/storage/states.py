"""What the validator concluded: every contender's state after the last closed period, and the
weight vectors it set or committed on chain."""

from __future__ import annotations

import json
from dataclasses import asdict

from core.scoring import ContenderState
from core.storage.base import Room, StorageError

STATE_VERSION = 1  # the shape of a stored ContenderState; a state of another version is refused


class StateRoom(Room):
    def finish_period(self, period: int, states: dict[tuple[str, str], ContenderState]) -> None:
        """Store every contender's new state and mark the period done, in one transaction."""
        rows = [(hk, task, period, json.dumps({"version": STATE_VERSION, **asdict(s)}))
                for (hk, task), s in states.items()]
        with self._guard(), self.db.transaction():
            self.db.executemany(
                "INSERT INTO states VALUES (?, ?, ?, ?) ON CONFLICT (hotkey, task) "
                "DO UPDATE SET period = excluded.period, state = excluded.state", rows)
            self.db.execute("UPDATE periods SET finished = 1 WHERE period = ?", (period,))

    def states(self, hotkey: str | None = None) -> dict[tuple[str, str], ContenderState]:
        """Every contender's state, or those of one miner's ``hotkey``."""
        sql, args = "SELECT hotkey, task, state FROM states", ()  # type: str, tuple
        if hotkey is not None:
            sql, args = sql + " WHERE hotkey = ?", (hotkey,)
        out = {}
        for hk, task, raw in self._run(sql, args):
            d = json.loads(raw)
            version = d.pop("version", 1)  # states written before versions were version 1
            if version != STATE_VERSION:
                raise StorageError(f"the state of {hk} {task} is of version {version}; this "
                                   f"validator reads version {STATE_VERSION}: upgrade it")
            for name in ("demonstrated_w", "scored", "other", "checks"):
                d[name] = tuple(tuple(x) if isinstance(x, list) else x for x in d[name])
            out[(hk, task)] = ContenderState(**d)
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
