"""One exception tree (``core/errors.py``): every exception class the project defines derives
from one of its kinds, so callers decide by kind (a peer's fault, something away for now, the
operator's setup), and no two classes share a name."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import core
from core.errors import PeerFault, SetupError, Sn19Error, Unavailable

OPTIONAL = ("vllm", "diffusers", "matplotlib")  # extras a module may need that this venv lacks


def defined_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(core.__path__, "core."):
        try:
            module = importlib.import_module(info.name)
        except ImportError as e:
            assert any(name in str(e) for name in OPTIONAL), (info.name, e)
            continue
        found += [c for _, c in inspect.getmembers(module, inspect.isclass)
                  if issubclass(c, BaseException) and c.__module__ == info.name]
    return found


def test_every_error_is_of_one_kind_and_names_are_not_twins():
    errors = defined_exceptions()
    assert len(errors) >= 15, [e.__name__ for e in errors]  # the walk found the rooms' errors
    stray = [f"{e.__module__}.{e.__name__}" for e in errors if not issubclass(e, Sn19Error)]
    assert not stray, f"exceptions outside core/errors.py's tree: {stray}"
    kinds = (PeerFault, Unavailable, SetupError)
    loose = [e.__name__ for e in errors if e is not Sn19Error and e not in kinds
             and not issubclass(e, kinds)]
    assert not loose, f"exceptions of no kind: {loose}"
    names = [e.__name__ for e in errors]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
