"""Data weighting: which samples a step sees and how much each counts.

Per-sample weights from the losses (online reweighting, bad-pair down-weighting), selection of the hardest
samples, and samplers that rebalance groups. They wrap a loss from :mod:`gradwise.losses` (or any
per-sample loss) rather than define one. One method per module; each lists its public names in ``__all__``
and this package re-exports them all.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
