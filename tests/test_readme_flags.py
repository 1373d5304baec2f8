"""The README's flag tables say what each entry point's parser does: every flag the parser takes
is in its table, every flag a table names is taken, and a default a table states is the
parser's (whose defaults come from the settings dataclasses: ``core/validator/settings.py``,
``core/miner/settings.py``). One source of defaults, and the README checked against it."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORDS = {"off": (False, None), "none": (None,), "on": (True,)}


def table(entry: str) -> list[list[str]]:
    """The rows of the README's table under ``### `neurons/<entry>.py```, as cells."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"### `neurons/{entry}.py`", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[1:]]


def parser_of(entry: str, monkeypatch) -> tuple[set[str], dict[str, argparse.Action]]:
    """(every option the entry point's --help shows, each option string's action) from the
    module's own parser, caught as it parses."""
    sys.path.insert(0, str(ROOT / "neurons"))
    try:
        module = importlib.import_module(entry)
    finally:
        sys.path.pop(0)
    caught: list[argparse.ArgumentParser] = []
    parse = argparse.ArgumentParser.parse_args

    def catching(self, *args, **kwargs):
        caught.append(self)
        return parse(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catching)
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), pytest.raises(SystemExit):
        module.parse_args(["--help"])
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9._-]*)", shown.getvalue())) - {"--help"}
    return options, caught[0]._option_string_actions


def flags_in(cell: str) -> tuple[list[str], list[str]]:
    """(the flags a row is about, their aliases in "(or ...)")."""
    main, _, aliases = cell.partition("(or")
    return (re.findall(r"`(--[a-z][a-z0-9._*-]*)", main),
            re.findall(r"`(--[a-z][a-z0-9._*-]*)", aliases))


def stated(text: str):
    """A default as the table states it: a number, a word in backticks, off/on; else None
    (a sentence the test does not read)."""
    text = text.strip().strip("`")
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)( MiB)?", text):
        return float(m.group(1)) * (2**20 if m.group(2) else 1)
    if text == "required":
        return None
    if text in WORDS:
        return WORDS[text]
    if re.fullmatch(r"[\w.]+", text) and not text.isdigit():
        return text
    return None


@pytest.mark.parametrize("entry", ["miner", "worker", "validator"])
def test_the_readme_table_is_the_parser(entry, monkeypatch):
    options, actions = parser_of(entry, monkeypatch)
    rows = table(entry)
    named, aliases = set(), set()
    checked = 0
    for row in rows:
        flags, others = flags_in(row[0])
        named.update(flags)
        aliases.update(others)
        values = [stated(v) for v in row[-1].split(", ")] if len(row) == 3 else []
        if len(values) != len(flags):
            continue
        for flag, value in zip(flags, values):
            if value is None or "*" in flag:
                continue
            actual = actions[flag].default
            if isinstance(value, tuple):
                assert actual in value, (entry, flag, actual, row[-1])
            elif isinstance(value, float):
                assert actual is not None and float(actual) == value, (entry, flag, actual)
            else:
                assert str(actual) == value, (entry, flag, actual, row[-1])
            checked += 1
    wildcards = [f[:-1] for f in named | aliases if f.endswith("*")]
    missing = {o for o in options - named - aliases
               if not any(o.startswith(w) for w in wildcards)}
    assert not missing, f"neurons/{entry}.py flags not in the README's table: {sorted(missing)}"
    unknown = {f for f in named | aliases if "*" not in f} - options
    assert not unknown, f"the README's neurons/{entry}.py table names no such flag: {unknown}"
    assert checked >= 5, checked  # the defaults read are most of the table's, not none
