"""A miner's feedback from this validator's store: its own contenders' states after the last
closed (scored) period, its windows' scores, how that period's requests ended and why, notes on
what held it back, and how the requests of the period still running have ended so far.

It reads the asking miner's rows only (by hotkey, on the store's index), and blocks while it
does: the peer endpoint runs it in the store's thread (``AsyncStore.run``)."""

from __future__ import annotations

from collections import Counter

from core.feedback import Feedback, TaskFeedback, WindowFeedback, outcome_reason
from core.records import Outcome
from core.scoring import QUALITY_POWER, effective
from core.storage import Store

LOOK_BACK = 1000  # periods searched for the last closed one (a validator long stopped)


def scored_and_running(store: Store) -> tuple[int | None, int | None]:
    """The last period this validator closed (its states are that period's), and the one it is
    in when that is not closed yet."""
    latest = store.latest_period()
    if latest is None:
        return None, None
    scored = store.last_finished(after=latest - LOOK_BACK)
    return scored, None if scored == latest else latest


def feedback_for(store: Store, validator: str, hotkey: str) -> Feedback:
    """``hotkey``'s rows only: nothing of another miner's is read into the answer."""
    states = {task: s for (_, task), s in store.states(hotkey).items()}
    scored, running = scored_and_running(store)
    records = store.records(scored, hotkey) if scored is not None else []
    now = store.records(running, hotkey) if running is not None else []
    failed_checks = store.failed_checks(scored, hotkey) if scored is not None else {}
    tasks = []
    for task, s in sorted(states.items()):
        mine = [r for r in records if r.task == task]
        outcomes = Counter(r.outcome.value for r in mine)
        zero = sum(1 for r in mine if r.outcome is Outcome.OK and r.quality == 0)
        notes = []
        if s.demonstrated < s.declared:
            notes.append(f"windows showed {s.demonstrated:g} of the {s.declared:g} declared: "
                         f"credited the smaller")
        failed = {k: v for k, v in outcomes.items() if k != Outcome.OK.value}
        for outcome, n in sorted(failed.items(), key=lambda kv: -kv[1])[:4]:
            notes.append(f"{n} {outcome} in period {scored}: {outcome_reason(outcome)}")
        for why, n in sorted(failed_checks.get(task, {}).items(), key=lambda kv: -kv[1])[:2]:
            notes.append(f"{n} checks failed: {why}")
        if zero:
            notes.append(f"{zero} answers scored 0 in period {scored} (a failed check, or twice "
                         f"the task's expected time)")
        if s.quality < 1:
            notes.append(f"quality {s.quality:.3f} weighs as {s.quality ** QUALITY_POWER:.3f}")
        tasks.append(TaskFeedback(
            task=task, declared=s.declared, demonstrated=s.demonstrated, credited=s.credited,
            reliability=s.reliability, quality=s.quality, effective=effective(s),
            windows=[WindowFeedback(asked=a, score=sc) for a, sc in s.scored],
            outcomes=dict(outcomes), scored_zero=zero, notes=notes[:8],
            running=dict(Counter(r.outcome.value for r in now if r.task == task))))
    return Feedback(validator=validator, hotkey=hotkey, period=scored, running=running,
                    tasks=tasks)
