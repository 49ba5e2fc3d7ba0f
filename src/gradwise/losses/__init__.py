"""Objectives of the seed papers: classification, calibration, metric and
contrastive learning, distillation, sample weighting.

Every objective is a function (``comp_sum_loss(logits, target, ...)``) and an
``nn.Module`` twin (``CompSumLoss(...)(logits, target)``), one method per
module in this package; shared validation and reduction live in
``_common``. Each module lists its public names in ``__all__``; this package
re-exports them all, so ``from gradwise.losses import comp_sum_loss`` works
for every method.
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
            raise ImportError(f"gradwise.losses: {_name!r} exported by two modules")
        globals()[_name] = getattr(_mod, _name)
        __all__.append(_name)
