"""Layers (``nn.Module`` building blocks) that a training method adds to a model: multi-sample dropout,
qk-layernorm attention, a transformer block with Pre-, Post- or Peri-LN placement and a small LM built on it.

One method per module; each lists its public names in ``__all__`` and this package re-exports them all.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
