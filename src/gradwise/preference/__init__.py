"""Preference optimization: objectives on log-probabilities, log-prob helpers,
a trainer and online loops.

Objectives are small pure functions, one method per module in this package,
taking sequence-level log-probabilities (shape [B]) and returning per-pair
losses (shape [B]); ``_common`` holds the shared validation. Each module lists
its public names in ``__all__`` and this package re-exports them all.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
