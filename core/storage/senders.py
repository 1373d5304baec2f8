"""The processes of a validator on one database (docs/protocol.md §6): each says it is alive
every poll (``beat``), stamped by the database's clock so that no process's own clock decides
another's death; the process running the period loop is marked (``lead``) and writes, as a
window opens, which of them share it (``share_window``, read by all: ``core.plan.shard`` splits
the contenders among them); each notes when its part has ended (``shard_done``), and the loop's
process reports the window once every part has."""

from __future__ import annotations

from core.storage.base import Room

LIVE_POLLS = 3  # a process is alive while it said so within this many of its own polls


class SenderRoom(Room):
    def beat(self, member: str, every: float) -> None:
        """``member`` (a process) is alive now, and says so every ``every`` seconds."""
        self._run(f"INSERT INTO senders (member, seen, every) VALUES (?, {self.db.now}, ?) "
                  "ON CONFLICT (member) DO UPDATE SET seen = excluded.seen, "
                  "every = excluded.every", (member, every))

    def live(self) -> list[str]:
        """The processes that said they were alive within ``LIVE_POLLS`` of their own polls,
        sorted."""
        return [m for (m,) in self._run(f"SELECT member FROM senders WHERE seen >= {self.db.now}"
                                        " - ? * every ORDER BY member", (LIVE_POLLS,))]

    def lead(self, member: str, every: float) -> str | None:
        """``member`` now runs the period loop: the process marked as running it before, if
        another (on SQLite, whose lease only its holder's death frees, a dead one)."""
        with self._guard(), self.db.transaction():
            before = self.db.execute("SELECT member FROM senders WHERE leads = 1 AND member <> ?",
                                     (member,))
            self.db.execute("UPDATE senders SET leads = 0 WHERE leads = 1")
            self.beat(member, every)
            self.db.execute("UPDATE senders SET leads = 1 WHERE member = ?", (member,))
        return before[0][0] if before else None

    def share_window(self, period: int, block: int, members: list[str]) -> list[str]:
        """The processes sharing the window at ``block`` (of ``period``): ``members`` unless it
        was shared before (a restart in it), which stays."""
        with self._guard(), self.db.transaction():
            held = self.db.execute("SELECT member FROM window_senders WHERE block = ?", (block,))
            if held:
                return sorted(m for (m,) in held)
            self.db.executemany("INSERT INTO window_senders (period, block, member) "
                                "VALUES (?, ?, ?)", [(period, block, m) for m in members])
        return sorted(members)

    def window_members(self, block: int) -> list[str]:
        """The processes sharing the window at ``block`` (none before it is shared)."""
        return [m for (m,) in self._run("SELECT member FROM window_senders WHERE block = ? "
                                        "ORDER BY member", (block,))]

    def start_shard(self, block: int, member: str, by: str) -> bool:
        """``by`` begins ``member``'s part of the window at ``block``, if nobody has: True if it
        is ``by``'s to send (one statement: two processes never both send it)."""
        return bool(self._run("UPDATE window_senders SET started = ? WHERE block = ? AND "
                              "member = ? AND started IS NULL RETURNING member",
                              (by, block, member)))

    def unstarted(self, block: int) -> list[str]:
        """The processes sharing the window at ``block`` whose part nobody has begun."""
        return [m for (m,) in self._run("SELECT member FROM window_senders WHERE block = ? AND "
                                        "started IS NULL ORDER BY member", (block,))]

    def shard_done(self, block: int, member: str, requests: int, at: float) -> None:
        """``member``'s part of the window at ``block`` has ended, ``requests`` sent."""
        self._run("UPDATE window_senders SET requests = ?, done = ? WHERE block = ? "
                  "AND member = ?", (requests, at, block, member))

    def shards(self, block: int) -> dict[str, int | None]:
        """Requests each process sharing the window sent: None while its part runs."""
        return dict(self._run("SELECT member, requests FROM window_senders WHERE block = ?",
                              (block,)))
