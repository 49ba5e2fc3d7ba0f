"""Diffusion training: a toy substrate (2-D Gaussian mixtures, 8x8 digits, EDM-preconditioned and
consistency denoisers), consistency training and one-step distillation objectives, guidance rules and
reward fine-tuning, all at CPU scale.

Objectives take tensors and return per-sample losses ``[B]`` in the input's dtype. Pieces that
diffusers already has (schedulers, guiders) are used from diffusers (the optional ``diffusion`` extra),
not rewritten.

One method per module; each lists its public names in ``__all__`` and this package re-exports them.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())

# Classes that subclass diffusers' own are built on first use (diffusers is optional and slow to import):
# reachable as package attributes, but not in __all__ (star-imports and the export above would build them).
_LAZY = {"AdaptiveGuidance": "adaptive_guidance_class", "DCSolverScheduler": "dc_solver_class"}


def __getattr__(name: str):
    if name in _LAZY:
        return globals()[_LAZY[name]]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
