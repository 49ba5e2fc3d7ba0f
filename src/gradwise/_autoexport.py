"""Re-export the public names of every method module of a package.

Every family package (``gradwise.losses``, ``gradwise.metrics``, ...) holds one method per module, each
listing its public names in ``__all__``; its ``__init__`` calls :func:`export_submodules` so users import
every method from the package.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import Any


def export_submodules(package: str, path: Iterable[str], namespace: dict[str, Any],
                      skip: Iterable[str] = ()) -> list[str]:
    """Import each non-private submodule of ``package`` and copy its ``__all__`` into ``namespace``.

    ``skip`` names submodules left out: deprecated modules kept only so that an old import path works
    (their names are exported by the package they moved to, and must not be exported twice).
    """
    exported: list[str] = []
    skipped = set(skip)
    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in skipped:
            continue
        mod = importlib.import_module(f"{package}.{info.name}")
        for name in getattr(mod, "__all__", ()):
            if name in namespace and namespace[name] is not getattr(mod, name):
                raise ImportError(f"{package}: {name!r} exported by two modules (or a module shares its name)")
            namespace[name] = getattr(mod, name)
            exported.append(name)
    return exported
