"""The processes that send a validator's windows (docs/protocol.md §6): each process on the
database says it is alive every poll (``beat``); the process running the period loop writes,
as a window opens, which of them share it (``share_window``, read by all:
``core.plan.shard`` splits the contenders among them); each notes when its part has ended
(``shard_done``), and the loop's process reports the window once every part has."""

from __future__ import annotations

from core.storage.base import Room


class SenderRoom(Room):
    def beat(self, member: str, at: float) -> None:
        """``member`` (a process) is alive at ``at`` (unix time)."""
        self._run("INSERT INTO senders (member, seen) VALUES (?, ?) "
                  "ON CONFLICT (member) DO UPDATE SET seen = excluded.seen", (member, at))

    def live(self, since: float) -> list[str]:
        """The processes alive since ``since``, sorted."""
        return [m for (m,) in self._run("SELECT member FROM senders WHERE seen >= ? "
                                        "ORDER BY member", (since,))]

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

    def shard_done(self, block: int, member: str, requests: int, at: float) -> None:
        """``member``'s part of the window at ``block`` has ended, ``requests`` sent."""
        self._run("UPDATE window_senders SET requests = ?, done = ? WHERE block = ? "
                  "AND member = ?", (requests, at, block, member))

    def shards(self, block: int) -> dict[str, int | None]:
        """Requests each process sharing the window sent: None while its part runs."""
        return dict(self._run("SELECT member, requests FROM window_senders WHERE block = ?",
                              (block,)))
