"""Optimizers of the seed papers, each a ``torch.optim.Optimizer`` with a multi-tensor and a fused step.

One method per module (``adabelief``, ``spam``, ...), each listing its public
names in ``__all__``; this package re-exports them all, as ``losses`` and
``preference`` do, so ``from gradwise.optim import SPAM`` works for every
method. The shared machinery lives in private modules: the base class
(``_base``), its state checks (``_state``), validation (``_validation``),
finiteness checks (``_finite``), transforms (``_transforms``), the state
codec hook (``_codec``), the multi-tensor pieces (``_functional``, ``_adam``)
and the kernels' loader (``_fused``). The base class and the transform and
codec interfaces are exported here too.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules
from gradwise.optim._base import GradwiseOptimizer
from gradwise.optim._transforms import GradTransform, UpdateTransform

__all__: list[str] = ["GradwiseOptimizer", "GradTransform", "UpdateTransform"]
__all__ += export_submodules(__name__, __path__, globals())
