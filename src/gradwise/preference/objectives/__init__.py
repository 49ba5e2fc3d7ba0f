"""Preference objectives: one method per module, each a pure function of sequence (or token)
log-probabilities returning per-pair losses.

Each module lists its public names in ``__all__``; this package re-exports them and
``gradwise.preference`` re-exports this package's, so ``from gradwise.preference import dpo_loss``
is the usual import. Shared validation lives in ``gradwise.preference._common``.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
