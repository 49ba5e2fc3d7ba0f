"""Old import paths that keep working after a move, with a ``DeprecationWarning`` naming the new one.

Two tools, one message ("<old> is deprecated; import from <new> (the old path will be removed after
version 0.2)"):

- :func:`moved_names`: for names that left a module that still exists.
- :func:`redirect`: for whole modules that moved, with no shim file left behind: an import hook
  answers the old module paths with the new module object itself, and the package's ``__getattr__``
  serves moved names (used by ``gradwise.preference`` for its objectives).

A module whose names moved sets ``__getattr__ = moved_names(__name__, {"old_name": "gradwise.new.module"})``:
Python calls a module's ``__getattr__`` only for names the module does not define, so the names that stayed
cost nothing and every access to a moved one (``from gradwise.losses.calibration import X``,
``gradwise.losses.X``) warns and returns the object from its new home.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

__all__ = ["REMOVAL", "moved_names", "warn_moved", "redirect"]

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


def warn_moved(old: str, new: str) -> None:
    """Warn that ``old`` moved to ``new``. ``stacklevel=3`` reaches the user's import or attribute access:
    the frames of importlib's machinery are skipped by :func:`warnings.warn` itself."""
    warnings.warn(f"{old} is deprecated; import from {new} (the old path will be removed {REMOVAL})",
                  DeprecationWarning, stacklevel=3)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import <old path>`` with the module now at the new path."""

    def __init__(self, modules: Mapping[str, str]) -> None:
        self.modules = dict(modules)
        self._real_specs: dict[str, Any] = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=None)

    def create_module(self, spec):
        new = self.modules[spec.name]
        warn_moved(spec.name, new)
        module = importlib.import_module(new)
        # the import system stamps our spec on the module it gets; exec_module puts the real one back
        self._real_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        real = self._real_specs.pop(module.__spec__.name, None)
        if real is not None:
            module.__spec__ = real


def redirect(package: str, *, modules: Mapping[str, str], names: Mapping[str, str],
             lazy: Mapping[str, Callable[[], Any]] | None = None) -> Callable[[str], Any]:
    """Keep the old paths of ``package`` working; returns the package's module ``__getattr__``.

    modules: old submodule name -> new module path (``{"dpo": "gradwise.preference.objectives.dpo"}``).
    names: public name that left the package -> the module that has it now.
    lazy: names computed on first use (no warning), e.g. tables read from the registry, which cannot
        be read while the package is still being imported.
    """
    finder = _MovedModuleFinder({f"{package}.{old}": new for old, new in modules.items()})
    if not any(isinstance(f, _MovedModuleFinder) and f.modules == finder.modules for f in sys.meta_path):
        sys.meta_path.append(finder)  # after the regular finders: never shadows a module that exists
    lazy = dict(lazy or {})

    def __getattr__(name: str) -> Any:
        if name in modules:
            warn_moved(f"{package}.{name}", modules[name])
            return importlib.import_module(modules[name])
        if name in names:
            warn_moved(f"{package}.{name}", names[name])
            return getattr(importlib.import_module(names[name]), name)
        if name in lazy:
            return lazy[name]()
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
