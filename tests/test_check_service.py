"""The checking service's order and sampling (docs/protocol.md §8): which answers are checked is
drawn after they arrive and cannot be foreseen; a backlog never starves a contender."""

import asyncio
import random
from collections import Counter

from core.checking import service
from core.checking.service import Checker, Job
from core.metagraph import Neuron
from core.protocol import ChatMessage, ChatRequest

REQUEST = ChatRequest(task="chat-llama-3", messages=[ChatMessage(role="user", content="hi")])


def job(record_id: int, hotkey: str, period: int = 7) -> Job:
    return Job(record_id, period, "chat-llama-3", REQUEST, ([], None), 0.1, 1.0,  # type: ignore[arg-type]
               neuron=miner(hotkey))


def miner(hotkey: str, uid: int = 1) -> Neuron:
    return Neuron(uid, hotkey, "cold", 0.0, False, "http://127.0.0.1:1", 0)


def test_each_period_checks_one_answer_drawn_uniformly_after_arrival():
    checker = Checker(None, "cpu", rate=0.0, rng=random.Random(5))
    places: Counter[int] = Counter()
    for period in range(1, 801):
        wanted = [checker.wants(period, "hk", "chat-llama-3") for _ in range(10)]
        assert sum(wanted) == 1  # with rate 0, exactly the drawn one
        places[wanted.index(True)] += 1
        asyncio.run(checker.drain(period, timeout=0))
    # the first period assumes FIRST_PERIOD_ANSWERS; then each of the 10 places alike (80 each)
    assert all(50 <= places[i] <= 115 for i in range(10)), places
    assert places[0] < 800 * 0.15  # the first answer is not the checked one (it used to be)


def test_a_contender_that_answers_fewer_than_last_period_may_go_unchecked_but_not_foreseen():
    rng = random.Random(9)
    unchecked = 0
    for _ in range(400):
        checker = Checker(None, "cpu", rate=0.0, rng=rng)
        checker._last_period[("hk", "chat-llama-3")] = 10
        unchecked += not any(checker.wants(1, "hk", "chat-llama-3") for _ in range(5))
    assert 140 <= unchecked <= 260  # half of the draws fall on the five answers it did not give


def test_the_queue_serves_the_longest_unchecked_contender_first_and_drops_the_best_checked():
    checker = Checker(None, "cpu", max_queue=3)
    checker._last_checked = {("a", "chat-llama-3"): 5, ("b", "chat-llama-3"): 2}
    for record_id, hotkey in enumerate(["a", "a", "b"]):
        checker._enqueue(job(record_id, hotkey))
    checker._enqueue(job(3, "new"))  # full: one of the best-checked contender's goes
    assert [j.hotkey for j in checker.queue] == ["a", "b", "new"]
    assert checker.stats.dropped == 1
    assert [checker._next().hotkey for _ in range(3)] == ["new", "b", "a"]


def test_a_failed_check_names_the_miner_at_warning(caplog, monkeypatch):
    written = []

    class Store:
        async def set_quality(self, record_id, quality, why):
            written.append((record_id, quality, why))

    monkeypatch.setattr(service, "quality_of", lambda job, mode: (0.0, "a lie (figures)"))

    async def main():
        checker = Checker(Store(), "cpu")
        checker.submit(Job(4, 7, "chat-llama-3", REQUEST, ([], None), 0.1, 1.0,  # type: ignore[arg-type]
                           neuron=miner("5Hostile", 12)))
        await checker.drain(7, timeout=30)
        await checker.close()
        return checker

    with caplog.at_level("WARNING", logger="validator.checking"):
        checker = asyncio.run(main())
    assert written == [(4, 0.0, "a lie")] and checker.stats.failed == 1
    [record] = [r for r in caplog.records if "failed its" in r.message]
    assert record.levelname == "WARNING" and "uid 12 (5Hostile)" in record.message


def test_an_opening_does_not_tell_an_image_miner_its_answer_is_checked():
    """Image answers not drawn are opened as often as drawn ones (decoys), so a miner cannot
    cheat safely after its period's first opening."""
    from core.protocol import TextToImageRequest

    request = TextToImageRequest(task="proteus-text-to-image", prompt="a", steps=4)
    opened: list[int] = []

    async def opener(job: Job) -> Job:
        opened.append(job.record_id)
        return job

    async def main():
        checker = Checker(None, "cpu", rate=0.0, rng=random.Random(3), opener=opener)
        checker._last_period[("hk", "proteus-text-to-image")] = 10
        queued = []
        checker.submit = queued.append  # type: ignore[method-assign]
        for period in range(300):
            for i in range(10):
                checker.offer(Job(period * 10 + i, period, "proteus-text-to-image", request,
                                  None, 0.1, 4.0, neuron=miner("hk")))  # type: ignore[arg-type]
            await asyncio.sleep(0)
            checker._answers.clear()
            checker._drawn.clear()
        await asyncio.gather(*checker._opening)
        return {j.record_id for j in queued}

    checked = asyncio.run(main())
    decoys = set(opened)
    assert len(checked) == 300 and checked.isdisjoint(decoys)
    assert 200 <= len(decoys) <= 400  # about one decoy a period beside the one drawn


def test_results_the_store_refuses_wait_and_are_written_in_order_once_it_is_back(monkeypatch):
    from core.storage import StorageError

    written, away = [], [True]

    class Store:
        async def set_quality(self, record_id, quality, why):
            if away[0]:
                raise StorageError("database is locked")
            written.append(record_id)

    monkeypatch.setattr(service, "quality_of", lambda job, mode: (1.0, None))

    async def main():
        checker = Checker(Store(), "cpu")
        for record_id in (1, 2):
            checker.submit(Job(record_id, 7, "chat-llama-3", REQUEST, ([], None), 0.1, 1.0,  # type: ignore[arg-type]
                               neuron=miner("5Honest")))
            await checker.drain(7, timeout=30)
        assert written == [] and checker.stats.checked == 2  # it went on checking
        away[0] = False
        checker.submit(Job(3, 8, "chat-llama-3", REQUEST, ([], None), 0.1, 1.0,  # type: ignore[arg-type]
                           neuron=miner("5Honest")))
        await checker.drain(8, timeout=30)
        await checker.close()

    asyncio.run(main())
    assert written == [1, 2, 3]
