import math

import pytest

from core.chain_time import PERIOD_SECONDS
from core.tasks import NODE_GPUS, TASK_IDS, TASKS, Kind, Task, Unit, check_weights


def test_table_matches_spec():
    assert len(TASKS) == 9
    assert math.isclose(sum(t.weight for t in TASKS.values()), 1.0)
    assert TASKS["chat-llama-3"].weight == 0.20 and TASKS["chat-llama-3"].unit is Unit.TOKENS
    assert TASKS["playground-text-to-image"].max_capacity == 240_000
    assert TASKS["chat-llama-3"].max_capacity == 92_160_000
    assert TASKS["inpaint"].units_per_synthetic == 20
    assert all((t.kind is Kind.CHAT) == (t.unit is Unit.TOKENS) for t in TASKS.values())
    assert all(t.model for t in TASKS.values())


def test_dropped_tasks_are_absent():
    assert not any("journey" in t or "sn6" in t or "finetune" in t for t in TASK_IDS)


def test_weights_that_do_not_sum_to_one_are_refused():
    rows = list(TASKS.values())
    bad = rows[:-1] + [Task(**{**rows[-1].__dict__, "weight": rows[-1].weight + 0.01})]
    with pytest.raises(ValueError, match="sum to 1"):
        check_weights(bad)


@pytest.mark.parametrize("declared, expected", [
    (-5, 0.0), (0.5, 0.0), (float("nan"), 0.0), (float("inf"), 0.0), (100, 100.0),
    (10**9, 92_160_000.0),
])
def test_clamp(declared, expected):
    assert TASKS["chat-llama-3"].clamp(declared) == expected


def test_expected_seconds_grows_with_units():
    t = TASKS["chat-llama-3"]
    assert t.expected_seconds(600) > t.expected_seconds(300) > t.overhead_s


@pytest.mark.parametrize("task", TASK_IDS)
def test_one_gpu_node_at_the_expected_speed_fits_under_the_cap(task):
    """docs/protocol.md §1: a node of NODE_GPUS GPUs, every stream busy all period with requests
    of the task's synthetic size (or its largest) at the expected time, declares under the cap:
    it has nothing to gain by splitting into UIDs. Half its streams would not reach the cap."""
    t = TASKS[task]
    size = t.units_per_synthetic
    node = NODE_GPUS * t.streams_per_gpu * PERIOD_SECONDS / t.expected_seconds(size) * size
    assert t.clamp(node) == node
    assert node > 0.5 * t.max_capacity

