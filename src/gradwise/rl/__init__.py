"""Reinforcement learning pieces that drop into ordinary PyTorch training loops (d3rlpy, CORL or CleanRL
style code): offline-RL value and policy objectives, critic-side components, and locally generated
transition data (gymnasium, the optional ``rl`` extra). No RL framework is a dependency: each objective
takes tensors (or the caller's critics) and returns a loss, or adds its gradients into ``.grad``.

One method per module; each lists its public names in ``__all__`` and this package re-exports them.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
