"""Post-hoc calibrators: models fitted on held-out outputs after training, so that confidences match accuracy.

Each calibrator maps logits to calibrated logits without changing the predicted class (temperature scaling,
per-sample temperatures) and has a ``fit`` (method or function) run once on a calibration split; the
metrics that measure the result are in :mod:`gradwise.metrics`. One method per module; each lists its public
names in ``__all__`` and this package re-exports them all.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
