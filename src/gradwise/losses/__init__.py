"""Objectives of the seed papers: classification, calibration, metric and
contrastive learning, distillation.

Every objective is a function (``comp_sum_loss(logits, target, ...)``) and an
``nn.Module`` twin (``CompSumLoss(...)(logits, target)``), one method per
module in this package; shared validation and reduction live in
``_common``. Each module lists its public names in ``__all__``; this package
re-exports them all, so ``from gradwise.losses import comp_sum_loss`` works
for every method.

What is not a loss lives in its own family: calibration errors and OPIS in
:mod:`gradwise.metrics`, post-hoc calibrators in :mod:`gradwise.calibration`,
sample weighting and selection in :mod:`gradwise.data_weighting`, layers in
:mod:`gradwise.nn`, schedules in :mod:`gradwise.schedules`. Their old paths here
(``gradwise.losses.calibration``, ``from gradwise.losses import
expected_calibration_error``, ...) still work with a ``DeprecationWarning``
until after version 0.2 (the table is ``_moved.MOVED``).
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules
from gradwise._deprecation import moved_names
from gradwise.losses._moved import SHIMS, moved_from_package

__all__: list[str] = export_submodules(__name__, __path__, globals(), skip=SHIMS)
__getattr__ = moved_names(__name__, moved_from_package())
