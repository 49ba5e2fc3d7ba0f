"""Metrics: numbers that evaluate a trained model (calibration errors, threshold consistency), not trained on.

They take a model's outputs and labels and return a 0-dim tensor with no gradient guarantee (binning and
thresholds are piecewise constant). Training diagnostics (continual evaluation, opposing signals, Hessian
trace, neuron alignment) are also plain functions and, through the one protocol in ``callback.py``
(``TrainingCallback``, ``call_callbacks``), callbacks on any training loop. One method (or one paper's group of metrics) per module; each lists its
public names in ``__all__`` and this package re-exports them all.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
