"""Coroutines reach the database only through ``core.storage.AsyncStore`` (issue 29): in the
validator's rooms that used to call the blocking ``Store`` from coroutines, no coroutine calls a
method of a ``store`` without awaiting it (an ``AsyncStore``'s methods are awaited; a blocking
``Store``'s cannot be), nor hands a ``store`` to a call it does not await (a blocking function
given the store), ``lease`` aside (it makes an object, no query); and no plain method of a class
there calls its ``store`` (the coroutines that call such a method would hold the loop). The
blocking work there is in module functions given the ``Store`` in the store's thread."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ["core/validator/loop.py", "core/validator/sharing.py", "core/validator/feedback.py",
         "core/validator/peer.py", "core/validator/replica.py"]
MAKES_NO_QUERY = "lease"


def _is_store(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "store" or (
        isinstance(node, ast.Name) and node.id == "store")


def _own_nodes(fn: ast.AsyncFunctionDef):
    """The nodes of ``fn`` outside the functions defined in it (those run elsewhere)."""
    todo = list(fn.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.Lambda):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def blocking_calls(source: str) -> list[str]:
    out = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.AsyncFunctionDef):
            continue
        nodes = list(_own_nodes(fn))
        awaited = {id(n.value) for n in nodes if isinstance(n, ast.Await)}
        for node in nodes:
            if not isinstance(node, ast.Call) or id(node) in awaited:
                continue
            f = node.func
            if isinstance(f, ast.Attribute) and _is_store(f.value) and f.attr != MAKES_NO_QUERY:
                out.append(f"{fn.name}:{node.lineno} calls store.{f.attr}")
            if any(_is_store(a) for a in node.args):
                out.append(f"{fn.name}:{node.lineno} hands the store to {ast.unparse(f)}")
    for cls in ast.walk(ast.parse(source)):
        if not isinstance(cls, ast.ClassDef):
            continue
        for fn in cls.body:
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and _is_store(node.func.value) and node.func.attr != MAKES_NO_QUERY):
                    out.append(f"{cls.name}.{fn.name}:{node.lineno} calls store.{node.func.attr}")
    return out


@pytest.mark.parametrize("path", ROOMS)
def test_no_coroutine_calls_the_blocking_store(path):
    assert blocking_calls((ROOT / path).read_text()) == []


def test_the_check_finds_a_blocking_call_and_a_store_handed_over():
    source = ("async def f(self):\n    self.store.windows(1)\n    measure(self.store, 1)\n"
              "    await self.store.windows(1)\n    await run(measure, self.store)\n"
              "    self.store.lease('x')\n"
              "class C:\n    def m(self):\n        return self.store.windows(1)\n")
    assert blocking_calls(source) == ["f:3 hands the store to measure",
                                      "f:2 calls store.windows", "C.m:9 calls store.windows"]
