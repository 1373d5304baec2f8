"""Audit windows and the synthetic plan (docs/protocol.md §3.3-3.5).

A window opens at a block drawn from that block's hash alone, with probability 1/period_blocks, so
no block says anything about when the next one opens, and every validator finds the same windows.
In a window every validator sends every contender its full declared rate, spread evenly over the
window's slices; outside windows only a small background sample. Only the timing jitter of a
request is private to the validator.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from core.budget import Contender
from core.request_shapes import smallest_request
from core.tasks import TASKS

SLICES = 5  # a window is credited by its worst slice (docs/protocol.md §4)
WINDOWS_PER_PERIOD = 12  # a window lasts period_blocks / 12 blocks
BACKGROUND = 0.01  # default share of each budget sent outside windows (liveness, quality checks)
LATE_GRACE_S = 5.0  # the least a planned request may go out after its slice (``Window.send_by``)


def window_blocks(period_blocks: int) -> int:
    """W: how many blocks a window lasts."""
    return max(1, round(period_blocks / WINDOWS_PER_PERIOD))


def hits(block_hash: str, period_blocks: int) -> bool:
    """Whether block ``block_hash`` draws an opening (probability 1/period_blocks); it opens a
    window unless one is open at that block already."""
    digest = hashlib.sha256(f"{block_hash}\x1fwindow".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < 1 / period_blocks


def openings(first: int, hashes: Sequence[str], period_blocks: int) -> tuple[int, list[int]]:
    """The blocks that open a window among ``first .. first + len(hashes) - 1``.

    Whether a block lies in an open window depends on the blocks before it, so the scan starts at
    an anchor: the first block whose W-1 predecessors in ``hashes`` all miss (no window can be open
    there). Returns (anchor, openings from the anchor on); an anchor past the blocks the caller
    needs means it must pass earlier hashes. Every validator scanning from any anchor finds the
    same windows."""
    w = window_blocks(period_blocks)
    hit = [hits(h, period_blocks) for h in hashes]
    run, anchor = 0, None
    for i, h in enumerate(hit):
        if run >= w - 1:
            anchor = i
            break
        run = 0 if h else run + 1
    if anchor is None:
        return first + len(hashes), []
    out, open_until = [], -1
    for i in range(anchor, len(hit)):
        if hit[i] and i > open_until:
            out.append(first + i)
            open_until = i + w - 1
    return first + anchor, out


@dataclass(frozen=True)
class Window:
    """One audit window as a validator runs it: opened at ``block``, ``seconds`` long from
    ``started_at`` (unix time), cut into ``SLICES`` equal slices."""

    block: int
    started_at: float
    seconds: float

    def send_by(self, at: float) -> float | None:
        """The latest a request planned at ``at`` may go out (unix time): one slice after the
        end of the slice it falls in, at least ``LATE_GRACE_S``, so that an event loop's or a
        thread's ordinary delay never makes it late, while a backlog behind a miner's full
        slots does within a slice; None outside the window."""
        part = self.slice_of(at)
        if part is None:
            return None
        length = self.seconds / SLICES
        return self.started_at + (part + 1) * length + max(length, LATE_GRACE_S)

    def slice_of(self, at: float) -> int | None:
        """The slice a request sent at ``at`` belongs to; None outside the window."""
        if not self.started_at <= at < self.started_at + self.seconds:
            return None
        return min(int((at - self.started_at) / self.seconds * SLICES), SLICES - 1)


def window_units(c: Contender, period_blocks: int) -> float:
    """A contender's full declared rate for one window: ``budget x W / period_blocks``."""
    return c.budget * window_blocks(period_blocks) / period_blocks


@dataclass(frozen=True)
class Send:
    at: float  # seconds after the plan's start
    contender: Contender
    units: int
    cap: float | None  # it goes only while the contender's use this period is under it


def requests_for(c: Contender, want: float, used: float) -> tuple[int, int]:
    """(count, units each) of the requests that send ``want`` units to ``c``: whole requests of
    the task's synthetic size, the nearest count, at least one where the budget (``used`` of it
    spent) allows one of at least ``smallest_request``; (0, 0) when it allows none."""
    per = TASKS[c.task].units_per_synthetic
    size = int(min(per, c.budget - used))  # never beyond the budget, organic and synthetic
    if size < smallest_request(c.task) or want <= 0:
        return 0, 0
    return max(1, round(want / per)), size


def spread(n: int, rng: random.Random) -> list[float]:
    """When ``n`` requests go, as shares of the time they spread over: evenly, with jitter. Not
    front-loaded: every validator's lone request in a window's first minute would be a burst
    of several times the declared rate there, which an honest miner at its capacity fails."""
    return [(i + rng.uniform(0.1, 0.9)) / n for i in range(n)]


def _spread(c: Contender, want: float, used: float, seconds: float,
            rng: random.Random) -> list[Send]:
    """``requests_for`` over ``seconds`` (``spread``). Each carries the cap that keeps organic
    traffic first: it goes only while the units used since ``used`` are fewer than the plan up
    to and including it."""
    n, size = requests_for(c, want, used)
    return [Send(at * seconds, c, size, used + size * (i + 1))
            for i, at in enumerate(spread(n, rng))]


def window_plan(contenders: Sequence[Contender], used: dict[tuple[str, str], float],
                period_blocks: int, seconds: float, left: float = 1.0,
                rng: random.Random | None = None) -> list[Send]:
    """A window's synthetic requests: each contender's full declared rate for the ``left``
    share of the window still to come (1 unless the validator joins it late), spread evenly over
    those ``seconds``. ``used``: each contender's units spent this period so far (organic traffic
    in the window then counts toward the window first)."""
    rng = rng or random.Random()
    sends = [s for c in contenders
             for s in _spread(c, left * window_units(c, period_blocks),
                              used.get((c.hotkey, c.task), 0.0), seconds, rng)]
    return sorted(sends, key=lambda s: s.at)


def background_plan(contenders: Sequence[Contender], seconds: float, share: float = BACKGROUND,
                    rng: random.Random | None = None) -> list[Send]:
    """The background sample outside windows: ``share`` of each budget (rounded to whole
    requests, so a small budget may get none) spread over ``seconds``; bounded by the budget
    alone, so it keeps sampling after a window or organic traffic."""
    rng = rng or random.Random()
    sends = []
    for c in contenders:
        per = TASKS[c.task].units_per_synthetic
        n = round(share * c.budget / per)
        for i in range(n):
            sends.append(Send((i + rng.uniform(0.1, 0.9)) * seconds / n, c, per, None))
    return sorted(sends, key=lambda s: s.at)


def shard(contenders: Sequence[Contender], members: Sequence[str], member: str
          ) -> list[Contender]:
    """The contenders ``member`` sends a window's requests to, when the processes ``members``
    share the window (docs/protocol.md §6): every task of a miner to one process (its
    ``--max-per-miner`` holds), miners placed largest first on the least-loaded process by
    their window's expected seconds of work, so the processes carry about equal loads. Every
    process computes the same split from the same inputs; ``member`` outside ``members``
    sends nothing."""
    if member not in members:
        return []
    work: dict[str, float] = {}
    for c in contenders:
        task = TASKS[c.task]
        work[c.hotkey] = work.get(c.hotkey, 0.0) + c.budget * task.seconds_per_unit
    load = {m: 0.0 for m in sorted(members)}
    owner: dict[str, str] = {}
    for hotkey in sorted(work, key=lambda h: (-work[h], h)):
        least = min(load, key=lambda m: (load[m], m))
        owner[hotkey] = least
        load[least] += work[hotkey]
    return [c for c in contenders if owner[c.hotkey] == member]


def miner_concurrency(sends: Sequence[Send], seconds: float) -> dict[str, float]:
    """``required_concurrency`` of each miner's sends (all its tasks): what its own slots at
    the validator must hold for its declared rate to be asked."""
    busy: dict[str, float] = {}
    for s in sends:
        hotkey = s.contender.hotkey
        busy[hotkey] = busy.get(hotkey, 0.0) + TASKS[s.contender.task].expected_seconds(s.units)
    return {h: b / seconds if seconds > 0 else math.inf for h, b in busy.items()}


def required_concurrency(sends: Sequence[Send], seconds: float) -> float:
    """Requests the validator must keep in flight on average to send ``sends`` at production
    speed within ``seconds``; above its concurrency limit, they cannot all be sent in time."""
    busy = sum(TASKS[s.contender.task].expected_seconds(s.units) for s in sends)
    return busy / seconds if seconds > 0 else math.inf
