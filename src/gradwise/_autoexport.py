"""Re-export the public names of every method module of a package.

``gradwise.losses`` and ``gradwise.preference`` hold one method per module,
each listing its public names in ``__all__``; their ``__init__`` calls
:func:`export_submodules` so users import every method from the package.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import Any


def export_submodules(package: str, path: Iterable[str], namespace: dict[str, Any]) -> list[str]:
    """Import each non-private submodule of ``package`` and copy its ``__all__`` into ``namespace``."""
    exported: list[str] = []
    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{package}.{info.name}")
        for name in getattr(mod, "__all__", ()):
            if name in namespace and namespace[name] is not getattr(mod, name):
                raise ImportError(f"{package}: {name!r} exported by two modules (or a module shares its name)")
            namespace[name] = getattr(mod, name)
            exported.append(name)
    return exported
