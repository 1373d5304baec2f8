"""Must show (issue 29): with 128,000 records in a validator's store (256 miners x 5 tasks x 100),
the event loop's largest stall while it makes a window's own report, answers a burst of
``/feedback`` for several miners at once, and closes the period stays under 50 ms, on SQLite and
PostgreSQL.

A loaded machine stalls a loop whatever the code does (a thread waiting for a core; measured
here at 15-30 ms with two cores at load 4, during queries that hold no GIL), so each figure is
measured beside two others in the same run: the same work called on the loop itself, and the
loop left idle for as long as the work took. The assertion is about what the code guarantees:
the work leaves the loop (its stall is a small part of the reference's), and it adds under 50 ms
to the stalls the machine causes anyway. The figures are printed."""

from __future__ import annotations

import asyncio
import functools
import gc
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from core import collector
from core.budget import Contender
from core.metagraph import Metagraph, Neuron
from core.plan import Window
from core.records import Outcome, period_outcomes
from core.scoring import ContenderState
from core.storage import AsyncStore, Store
from core.tasks import TASK_IDS
from core.validator.closer import close_in_store
from core.validator.feedback import feedback_for
from core.validator.metrics import ValidatorMetrics
from core.validator.settings import Settings
from core.validator.sharing import Sharing, own_report_of

MINERS, TASKS, PER_CONTENDER = 256, TASK_IDS[:5], 100
PERIOD, PB, NETUID = 2, 300, 19
WINDOW = Window(PERIOD * PB + 40, 10_000.0, 100.0)
BOUND_S = 0.050
# a phase is judged by its best of up to 3 runs: a stall the machine causes (a thread waiting for
# a core under load) comes and goes between runs, work on the loop stalls every run by its size
ATTEMPTS = 3
ASKERS = 64  # miners asking for their feedback at once (256 may each ask every 10 s)


class Chain:
    netuid = NETUID


class Key:
    ss58_address = "5Validator"


def fill(store: Store) -> tuple[list[Contender], Metagraph]:
    """Period 1 closed (every contender has a state), period 2 running with 128,000 records,
    half of them in one window, written with executemany as a bench would."""
    rng = random.Random(29)
    miners = [f"5Miner{uid:03d}" for uid in range(MINERS)]
    contenders = [Contender(uid, hk, task, 5000.0, 5000.0, 0)
                  for uid, hk in enumerate(miners) for task in TASKS]
    for period in (1, PERIOD):
        store.begin_period(period, period * PB, "0x1", 1.0, 0.0, contenders)
    store.add_window(PERIOD, WINDOW)
    store.finish_period(1, {(c.hotkey, c.task): ContenderState(declared=c.declared)
                            for c in contenders})
    outcomes = [Outcome.OK] * 8 + [Outcome.TIMEOUT, Outcome.RATE_LIMITED]
    rows = [(PERIOD, c.hotkey, c.task, 0, rng.choice(outcomes).value,
             float(rng.randint(1, 500)), 0.5, rng.choice((None, 1.0, 0.0)),
             WINDOW.started_at + rng.uniform(-WINDOW.seconds, WINDOW.seconds))
            for c in contenders for _ in range(PER_CONTENDER)]
    with store.db.transaction():
        store.db.executemany("INSERT INTO requests (period, hotkey, task, organic, outcome, "
                             "units, latency_s, quality, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             rows)
    graph = Metagraph(PERIOD * PB, tuple(Neuron(uid, hk, "c", 0.0, False, None, 0)
                                         for uid, hk in enumerate(miners)))
    return contenders, graph


async def largest_stall(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """The longest the loop went without running a ticker coroutine (that wakes every
    millisecond) while ``work`` ran, and how long it ran, in seconds."""
    worst, done, ticking = 0.0, False, asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        ticking.set()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst, last = max(worst, now - last), now

    task = asyncio.create_task(ticker())
    await ticking.wait()
    began = time.perf_counter()
    await work()
    took = time.perf_counter() - began
    done = True
    await task
    return worst, took


@pytest.fixture
def settled_collector():
    """The garbage collector as a neuron process sets it after start-up (``core.collector``),
    put back afterwards: its collections hold the GIL, so they are part of any stall."""
    threshold = gc.get_threshold()
    collector.settle()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_loop_never_stalls_on_a_full_period(store, settled_collector, capsys):
    contenders, graph = fill(store)
    assert store.db.execute("SELECT COUNT(*) FROM requests")[0][0] == 128_000
    aio = AsyncStore(store)
    sharing = Sharing(None, Key(), store, Chain(), ValidatorMetrics())  # type: ignore[arg-type]
    askers = [c.hotkey for c in contenders[::len(TASKS)][:ASKERS]]
    settings = Settings(period_blocks=PB)

    async def whole_period_on_loop():  # what the window report did before: for the record
        period_outcomes(contenders, store.records(PERIOD), [WINDOW])

    async def report_on_loop():
        own_report_of(store, NETUID, Key.ss58_address, PERIOD, WINDOW, contenders)

    async def report():  # stored by the first run; a retry finds it stored (False)
        await sharing.own_report(PERIOD, WINDOW, contenders)

    async def feedback_on_loop():
        for hotkey in askers:
            feedback_for(store, Key.ss58_address, hotkey)

    async def feedback():
        answers = await asyncio.gather(*(aio.run(feedback_for, Key.ss58_address, hotkey)
                                         for hotkey in askers))
        assert all(a.running == PERIOD and len(a.tasks) == len(TASKS) for a in answers)

    async def close_on_loop():
        close_in_store(store, PERIOD, contenders, graph, settings, ValidatorMetrics())

    async def close():
        closing = await aio.run(close_in_store, PERIOD, contenders, graph, settings,
                                ValidatorMetrics())
        assert len(closing.rows) == len(contenders)

    async def measure() -> tuple[float, dict[str, tuple[float, float, float]]]:
        before, _ = await largest_stall(whole_period_on_loop)
        out = {}
        for name, on_loop, off in (("window report", report_on_loop, report),
                                   ("feedback burst", feedback_on_loop, feedback),
                                   ("period close", close_on_loop, close)):
            reference, _ = await largest_stall(on_loop)
            tries = []
            for _ in range(ATTEMPTS):
                stall, took = await largest_stall(off)
                idle, _ = await largest_stall(functools.partial(asyncio.sleep, took))
                tries.append((stall, idle))
                if stall < BOUND_S + idle and stall < reference / 2:
                    break
            out[name] = (reference, *min(tries, key=lambda t: t[0] - t[1]))
        return before, out

    before, figures = asyncio.run(measure())
    with capsys.disabled():
        print(f"\n{type(store.db).__name__}, 128,000 records: a window report read the whole "
              f"period on the loop before, {before * 1000:.0f} ms")
        for name, (reference, stall, idle) in figures.items():
            print(f"  {name}: largest stall {stall * 1000:.1f} ms off the loop (idle loop "
                  f"{idle * 1000:.1f} ms); the same work on the loop {reference * 1000:.0f} ms")
    for name, (reference, stall, idle) in figures.items():
        assert stall < BOUND_S + idle, (name, stall, idle)
        assert stall < reference / 2, (name, stall, reference)
    assert store.period(PERIOD).finished
    assert store.report(WINDOW.block, Key.ss58_address) is not None

