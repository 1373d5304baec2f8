import pytest

from core.capacity import clamp_declaration
from core.miner.config import ConfigError, group_load, load_config, task_load


def write(tmp_path, text):
    path = tmp_path / "miner.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "tasks:\n  chat-llama-4:\n    capacity: 10\n",
            ["line 2", "tasks.chat-llama-4", "unknown task", "allowed: chat-llama-3"],
        ),
        (
            "tasks:\n  inpaint:\n    capacity: -3\n",
            ["line 3", "tasks.inpaint.capacity", "greater than or equal to 0", "got -3"],
        ),
        (
            "tasks:\n  inpaint:\n    capacity: lots\n",
            [
                "line 3",
                "tasks.inpaint.capacity",
                "valid number",
                "got 'lots'",
                "allowed: a number >= 0",
            ],
        ),
        (
            "tasks:\n  inpaint:\n    capacity: '100'\n",
            ["line 3", "tasks.inpaint.capacity", "got '100'"],
        ),
        (
            "tasks:\n  inpaint:\n    capacity: 10\n    colour: red\n",
            [
                "line 4",
                "tasks.inpaint.colour",
                "unknown key",
                "allowed: capacity, workers, backend, group, model, device, dtype",
            ],
        ),
        (
            "tasks:\n  inpaint:\n    capacity: 10\nextra: 1\n",
            ["line 4", "extra", "unknown key", "allowed: tasks, groups"],
        ),
        ("tasks:\n  inpaint: {capacity: [1\n",
         ["line 3", "YAML syntax error", "the '[' on line 2 is not closed"]),
        ("task:\n  inpaint: {capacity: 1}\n",
         ["line 1", "task: unknown key", "did you mean 'tasks'?", "allowed: tasks, groups"]),
        ("tasks:\n\tinpaint: {capacity: 1}\n", ["line 2, column 1", "a tab character"]),
        ("tasks:\n  inpaint:\n    capacity: 1\n   group: g\n",
         ["line 4, column 4", "not indented like the keys of the block on line 2"]),
        ("tasks:\n  inpaint:\n    capacity: 1\n      group: g\n",
         ["line 4", "a ':' where no key can start"]),
        ("tasks:\n  inpaint: {capacity: 1, model: 'a}\n",
         ["line 3", "the quote opened on line 2 is not closed"]),
        (
            "tasks:\n  inpaint:\n    backend: cpu\n",
            ["line 2", "tasks.inpaint", "needs a capacity, or workers"],
        ),
        (
            "tasks:\n  chat-llama-3:\n    workers:\n      - {capacity: 10, url: http://a:1}\n"
            "      - {capacity: 10}\n",
            ["line 5", "tasks.chat-llama-3.workers.1", "exactly one of device"],
        ),
        (
            "tasks:\n  chat-llama-3:\n    workers:\n      - capacity: 10\n        url: ftp://x\n",
            ["line 5", "tasks.chat-llama-3.workers.0.url", "allowed: http(s)://host:port"],
        ),
        (
            "tasks:\n  chat-llama-3:\n    workers:\n"
            "      - {capacity: 1, url: 'http://a:1', tken: x}\n",
            ["line 4", "workers.0.tken", "unknown key", "token_env"],
        ),
        (
            "tasks:\n  inpaint:\n    capacity: 10\n    backend: tpu\n",
            ["line 4", "tasks.inpaint.backend", "allowed: one of cpu, vllm, diffusers"],
        ),
        (
            "tasks:\n  inpaint:\n    capacity: 10\n    group: gpu9\n",
            ["line 4", "tasks.inpaint.group", "'gpu9' is not defined"],
        ),
        (
            "groups:\n  g: {concurrency: 0}\ntasks:\n  inpaint: {capacity: 1, group: g}\n",
            ["line 2", "groups.g.concurrency", "allowed: an integer >= 1"],
        ),
        ("- just\n- a list\n", ["expected a mapping"]),
        (
            "tasks:\n  inpaint:\n    capacity: 10\n    backend: vllm\n",
            [
                "line 4",
                "tasks.inpaint.backend",
                "vllm cannot serve inpaint tasks",
                "allowed: cpu or diffusers",
            ],
        ),
        (
            "tasks:\n  chat-mixtral: {capacity: 10, backend: vllm, gpu_memory_utilization: 1.5}\n",
            ["line 2", "gpu_memory_utilization", "allowed: a fraction of the GPU's memory"],
        ),
    ],
)
def test_bad_file_gives_one_clear_message(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert "\n" not in message
    for part in expected:
        assert part in message, message
    # PyYAML's own words are not an operator's, nor is a missing key caused by a typo
    assert "<block" not in message and "'\\t'" not in message
    assert "required key is missing" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yml: file not found"):
        load_config(tmp_path / "nope.yml")


def test_shipped_configs_load():
    for name in ("default", "localnet/small", "localnet/medium", "localnet/large"):
        assert load_config(f"miner_config/{name}.yml").declaration()


def test_declaration_is_clamped(tmp_path):
    config = load_config(write(tmp_path, "tasks:\n  inpaint: {capacity: 999999}\n"
                                         "  chat-mixtral: {capacity: 0.4}\n"))
    assert config.declaration() == {"inpaint": 240_000.0}


def test_clamp_declaration_drops_unknown_and_junk():
    raw = {"inpaint": 10, "nope": 5, "chat-llama-3": "12", "chat-mixtral": True,
           "proteus-text-to-image": float("nan")}
    assert clamp_declaration(raw) == {"inpaint": 10.0}


def test_group_load_flags_an_over_declared_gpu(tmp_path):
    config = load_config(write(tmp_path, """
tasks:
  chat-llama-3: {capacity: 576000, group: g}
  inpaint: {capacity: 4000, group: g}
groups:
  g: {concurrency: 1}
"""))
    assert group_load(config, 3600)["g"] > 1
    config.groups["g"].concurrency = 64
    assert group_load(config, 3600)["g"] < 1


def test_task_load_flags_a_lone_task_declaring_more_than_its_concurrency_serves(tmp_path):
    config = load_config(write(tmp_path, """
tasks:
  chat-llama-3: {capacity: 576000}
  chat-mixtral:
    workers:
      - {capacity: 576000, url: 'http://a:1', concurrency: 16}
"""))
    load = task_load(config, 3600)
    # 1,920 requests of 300 tokens at 6.5 s each, one at a time: 3.5 periods' worth
    assert 3 < load["chat-llama-3"] < 4
    assert load["chat-mixtral"] < 1  # sixteen at once


@pytest.mark.process
def test_check_config_reports_back_ends_that_cannot_load_here(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, "tasks:\n  chat-llama-3: {capacity: 500000, backend: vllm}\n")
    run = subprocess.run([sys.executable, "neurons/miner.py", "--config", str(path),
                          "--check-config"], capture_output=True, text=True)
    assert run.returncode == 1  # no vllm (and no GPU) on this machine
    assert "the vllm back end needs vllm" in run.stdout
    ok = subprocess.run([sys.executable, "neurons/miner.py", "--check-config"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "chat-llama-3" in ok.stdout


@pytest.mark.parametrize(
    "text, expected",
    [
        ("tasks:\n  inpaint: {capacity: 10}\n  inpaint: {capacity: 20}\n",
         ["line 3", "'inpaint' is given twice (first on line 2)"]),
        ("tasks:\n  inpaint:\n    capacity: 10\n    capacity: 20\n",
         ["line 4", "'capacity' is given twice"]),
        ("tasks: {}\n", ["tasks", "no task is declared", "allowed: chat-llama-3"]),
        ("tasks:\n  chat-llama-3:\n", ["line 2", "tasks.chat-llama-3", "nothing is set under it"]),
        ("tasks:\n  chat-lama-3: {capacity: 10}\n",
         ["line 2", "unknown task", "did you mean 'chat-llama-3'?"]),
        ("tasks:\n  inpaint: {capacty: 10}\n",
         ["line 2", "tasks.inpaint.capacty", "unknown key", "did you mean 'capacity'?"]),
        ("tasks:\n  chat-llama-3:\n    workers:\n      - {capacity: 1, url: 'http://a:1'}\n"
         "      - {capacity: 1, url: 'http://a:1/'}\n",
         ["line 5", "workers.1.url", "listed before", "counts once"]),
        ("tasks:\n  chat-llama-3:\n    workers:\n"
         "      - {capacity: 1, url: 'http://a:1', token_env: SN19_TEST_UNSET_TOKEN}\n",
         ["line 4", "token_env", "SN19_TEST_UNSET_TOKEN is not set"]),
    ],
)
def test_typos_a_yaml_1_1_reader_lets_through_are_refused(tmp_path, text, expected, monkeypatch):
    monkeypatch.delenv("SN19_TEST_UNSET_TOKEN", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert "TaskEntry" not in message and "\n" not in message
    for part in expected:
        assert part in message, message


def test_exponents_are_numbers_and_a_url_is_explained(tmp_path, monkeypatch):
    config = load_config(write(tmp_path, "tasks:\n  inpaint: {capacity: 1e3}\n"))
    assert config.tasks["inpaint"].capacity == 1000.0
    monkeypatch.setenv("SN19_TEST_TOKEN", "x" * 20)
    worker = "{capacity: 1, url: 'http://a:1', token_env: SN19_TEST_TOKEN}"
    assert load_config(write(tmp_path, f"tasks:\n  chat-llama-3:\n    workers: [{worker}]\n"))
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "tasks:\n  chat-llama-3:\n    workers:\n"
                                    "      - {capacity: 1, url: 'a b'}\n"))
    assert "not in the form expected" in str(err.value) and "^https" not in str(err.value)


def test_the_default_file_teaches_the_current_protocol_and_every_key():
    import re

    from core.miner.config import GroupEntry, MinerConfig, TaskEntry, WorkerEntry
    from core.protocol import PROTOCOL_VERSION
    from core.tasks import TASKS

    text = open("miner_config/default.yml").read()
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert f"protocol {PROTOCOL_VERSION.split('.')[0]}" in comments
    assert "no clawback and no debt" in comments and "claws back" not in comments
    keys = {k for model in (MinerConfig, TaskEntry, WorkerEntry, GroupEntry)
            for k in model.model_fields}
    explained = set(re.findall(r"^#\s+(?:- )?([a-z_]+)(?::| {2,})", comments, re.M))
    assert keys <= explained, keys - explained
    for task in TASKS.values():  # the table of tasks is the code's
        size = task.units_per_synthetic
        row = (rf"^#\s+{task.id}\s+{task.unit.value}\s+{task.max_capacity:,}\s+{size}\s+"
               rf"{task.expected_seconds(size):.1f} s$")
        assert re.search(row, comments, re.M), task.id
