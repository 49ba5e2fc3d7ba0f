"""Old import paths that keep working after a move, with a ``DeprecationWarning`` naming the new one.

A module whose names moved sets ``__getattr__ = moved_names(__name__, {"old_name": "gradwise.new.module"})``:
Python calls a module's ``__getattr__`` only for names the module does not define, so the names that stayed
cost nothing and every access to a moved one (``from gradwise.losses.calibration import X``,
``gradwise.losses.X``) warns and returns the object from its new home.
"""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["REMOVAL", "moved_names"]

#: When the old paths go away.
REMOVAL = "after version 0.2"


def moved_names(old_module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving each name of ``moved`` (name -> new module) from its new module."""
    table = dict(moved)

    def __getattr__(name: str) -> Any:
        new = table.get(name)
        if new is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(f"{old_module}.{name} is deprecated; import from {new} "
                      f"(the old path will be removed {REMOVAL})", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return __getattr__
