"""The store as a coroutine reaches it: every method a coroutine, each running the store's own
blocking method in one of the store's threads (``Store.io``), on SQLite and PostgreSQL alike.
A coroutine holds an ``AsyncStore``, never the ``Store`` itself, so it cannot call the database
on its event loop by mistake (a call it forgets to await is a type error: mypy's
``unused-coroutine``).

Work that reads many rows or scores them in Python (a period's close, a miner's feedback) runs
whole in the thread through ``run``, with the blocking ``Store`` handed to it there. The methods
below are those coroutines use; another is one line (``_off``). ``tests/test_store_boundary.py``
checks that the validator's coroutines call no store method they do not await."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from core.storage.store import Store

P = ParamSpec("P")
T = TypeVar("T")


def _off(method: Callable[Concatenate[Store, P], T]
         ) -> Callable[Concatenate[AsyncStore, P], Coroutine[Any, Any, T]]:
    """``method`` of ``Store`` as a coroutine method of ``AsyncStore``."""

    @functools.wraps(method)
    async def call(self: AsyncStore, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.run(method, *args, **kwargs)

    return call


class AsyncStore:
    def __init__(self, store: Store):
        self._store = store

    async def run(self, fn: Callable[Concatenate[Store, P], T], *args: P.args,
                  **kwargs: P.kwargs) -> T:
        """``fn(store, *args, **kwargs)`` in one of the store's threads."""
        return await self._store.io(functools.partial(fn, self._store, *args, **kwargs))

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)``, a call that reaches the database through the store (the
        period book's, a lease's), in one of the store's threads."""
        return await self._store.io(functools.partial(fn, *args, **kwargs))

    # periods and budgets
    begin_period = _off(Store.begin_period)
    add_contenders = _off(Store.add_contenders)
    period = _off(Store.period)
    unfinished = _off(Store.unfinished)
    latest_period = _off(Store.latest_period)
    contenders = _off(Store.contenders)
    add_window = _off(Store.add_window)
    windows = _off(Store.windows)
    note_pooling = _off(Store.note_pooling)
    # the processes sharing windows
    beat = _off(Store.beat)
    live = _off(Store.live)
    lead = _off(Store.lead)
    share_window = _off(Store.share_window)
    window_members = _off(Store.window_members)
    start_shard = _off(Store.start_shard)
    unstarted = _off(Store.unstarted)
    shard_done = _off(Store.shard_done)
    shards = _off(Store.shards)
    holders = _off(Store.holders)
    release = _off(Store.release)
    prune = _off(Store.prune)
    # records
    seal = _off(Store.seal)
    set_quality = _off(Store.set_quality)
    # reports
    add_report = _off(Store.add_report)
    report_body = _off(Store.report_body)
    reports = _off(Store.reports)
    reporters = _off(Store.reporters)
    # states
    finish_period = _off(Store.finish_period)
    states = _off(Store.states)
    note_weights = _off(Store.note_weights)
    pending_commit = _off(Store.pending_commit)
    note_revealed = _off(Store.note_revealed)
