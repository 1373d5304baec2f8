"""A miner's feedback from this validator's store: its own contenders' states after the last
closed period, its windows' scores, how its requests ended, and notes on what held it back."""

from __future__ import annotations

from collections import Counter

from core.feedback import Feedback, TaskFeedback, WindowFeedback
from core.records import Outcome
from core.scoring import QUALITY_POWER, effective
from core.storage import Store


def feedback_for(store: Store, validator: str, hotkey: str) -> Feedback:
    """``hotkey``'s rows only: nothing of another miner's is read into the answer."""
    states = {task: s for (hk, task), s in store.states().items() if hk == hotkey}
    period = store.latest_period()
    records = [r for r in store.records(period) if r.hotkey == hotkey] if period is not None else []
    failed_checks = store.failed_checks(period, hotkey) if period is not None else {}
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
        if failed:
            notes.append("requests that failed last period: "
                         + ", ".join(f"{v} {k}" for k, v in sorted(failed.items())))
        for why, n in sorted(failed_checks.get(task, {}).items(), key=lambda kv: -kv[1])[:3]:
            notes.append(f"{n} checks failed: {why}")
        if zero:
            notes.append(f"{zero} answers scored 0 last period (a failed check, or twice the "
                         f"task's expected time)")
        if s.quality < 1:
            notes.append(f"quality {s.quality:.3f} weighs as {s.quality ** QUALITY_POWER:.3f}")
        tasks.append(TaskFeedback(
            task=task, declared=s.declared, demonstrated=s.demonstrated, credited=s.credited,
            reliability=s.reliability, quality=s.quality, effective=effective(s),
            windows=[WindowFeedback(asked=a, score=sc) for a, sc in s.scored],
            outcomes=dict(outcomes), scored_zero=zero, notes=notes))
    return Feedback(validator=validator, hotkey=hotkey, period=period, tasks=tasks)
