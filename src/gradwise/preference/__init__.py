"""Preference optimization: objectives on log-probabilities, log-prob helpers,
a trainer and online loops.

Objectives are small pure functions, one method per module in this package,
taking sequence-level log-probabilities (shape [B]) and returning per-pair
losses (shape [B]); ``_common`` holds the shared validation. Each module lists
its public names in ``__all__`` and this package re-exports them all.
"""
from __future__ import annotations

import importlib
import pkgutil

__all__: list[str] = []

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name.startswith("_"):
        continue
    _mod = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_mod, "__all__", ()):
        if _name in globals() and globals()[_name] is not getattr(_mod, _name):
            raise ImportError(f"gradwise.preference: {_name!r} exported by two modules")
        globals()[_name] = getattr(_mod, _name)
        __all__.append(_name)
