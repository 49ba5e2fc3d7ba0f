"""Scientific-ML training: physics-informed losses (causal PINN weights), embedded Runge-Kutta solvers with
differentiable error and stiffness regularisers for neural ODEs, and learned proximal networks (LPN).

Plain torch: torchdiffeq and torchode (the optional ``sciml`` extra) are used only by the tests that check
the embedded solvers against their steps.

One method per module; each lists its public names in ``__all__`` and this package re-exports them.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
