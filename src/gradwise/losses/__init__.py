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

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
