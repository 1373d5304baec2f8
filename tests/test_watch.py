"""StreamWatch: a stream's deadline and stall limit with one timer per request."""

import asyncio
import time

import pytest

from core.validator.watch import StreamWatch


async def lines(delays):
    for d in delays:
        await asyncio.sleep(d)
        yield d


def run(coro):
    return asyncio.run(coro)


def test_lines_within_the_limits_pass_and_the_deadline_ends_a_slow_start():
    async def go(first_delay):
        loop = asyncio.get_running_loop()
        watch = StreamWatch(loop.time() + 1.0, stall=10)  # 20x the first line's delay
        stream = lines([first_delay, 0.01])
        try:
            return [await watch.wait(anext(stream)), await watch.wait(anext(stream))]
        finally:
            watch.close()

    assert run(go(0.05)) == [0.05, 0.01]
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        run(go(5.0))
    assert time.monotonic() - began < 4.0  # the deadline, not the 5 s line


def test_once_started_a_silence_longer_than_the_stall_ends_it_and_lines_keep_it_alive():
    async def go(delays):
        loop = asyncio.get_running_loop()
        watch = StreamWatch(loop.time() + 30, stall=0.5)
        stream = lines(delays)
        got = []
        try:
            while len(got) < len(delays):
                got.append(await watch.wait(anext(stream)))
                watch.started = True
        finally:
            watch.close()
        return got

    # 1 s in all, twice the stall, never silent for more than a tenth of it: a busy machine
    # would have to hold this process back 0.45 s between two lines to fail it
    assert len(run(go([0.0] + [0.05] * 20))) == 21
    with pytest.raises(TimeoutError):
        run(go([0.0, 0.1, 3.0]))


def test_the_consumers_own_time_between_lines_is_never_cut_short():
    async def go():
        loop = asyncio.get_running_loop()
        watch = StreamWatch(loop.time() + 30, stall=0.1)
        stream = lines([0.0, 0.0])
        try:
            await watch.wait(anext(stream))
            watch.started = True
            await asyncio.sleep(0.4)  # e.g. relaying to a slow client: longer than the stall
            return await watch.wait(anext(stream))
        finally:
            watch.close()

    assert run(go()) == 0.0


def test_a_cancel_from_elsewhere_stays_a_cancel():
    async def go():
        loop = asyncio.get_running_loop()
        watch = StreamWatch(loop.time() + 30, stall=10)
        try:
            await watch.wait(anext(lines([5.0])))
        finally:
            watch.close()

    async def main():
        task = asyncio.create_task(go())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


def test_after_a_pause_the_stall_counts_from_the_last_read():
    """A reader that paused after reading (``dispatch.pause``) gives the silence it slept
    through to the stall: a miner silent for the stall since the last read has stalled, however
    the reader spent that time, and what came meanwhile is read."""
    async def go(buffered: bool):
        loop = asyncio.get_running_loop()
        watch = StreamWatch(loop.time() + 30, stall=0.2)
        watch.started = True
        arrivals: asyncio.Queue[str] = asyncio.Queue()
        if buffered:
            arrivals.put_nowait("came during the pause")
        read_at = loop.time()
        await asyncio.sleep(0.3)  # the pause: longer than the stall
        loop.call_later(0.1, arrivals.put_nowait, "too late")  # within a stall from now
        try:
            return await watch.wait(arrivals.get(), read_at)
        finally:
            watch.close()

    assert run(go(buffered=True)) == "came during the pause"
    with pytest.raises(TimeoutError):
        run(go(buffered=False))


def test_what_came_before_the_deadline_is_read_after_it():
    """A reader that paused up to the deadline still takes what came meanwhile: only a wait
    with nothing to read ends at the deadline."""
    async def go(buffered: bool):
        loop = asyncio.get_running_loop()
        watch = StreamWatch(loop.time() + 0.1, stall=10)
        arrivals: asyncio.Queue[str] = asyncio.Queue()
        if buffered:
            arrivals.put_nowait("the final line")
        await asyncio.sleep(0.2)  # the pause, past the deadline
        loop.call_later(0.1, arrivals.put_nowait, "too late")
        try:
            return await watch.wait(arrivals.get())
        finally:
            watch.close()

    assert run(go(buffered=True)) == "the final line"
    with pytest.raises(TimeoutError):
        run(go(buffered=False))
