"""Compression during training: quantizers and the gradient estimators that train through them (ReSTE's
rectified straight-through estimator), quantization-aware layers and pruning on plain ``nn.Module``s
(``torchao`` is optional; its plain STE is the baseline, not rewritten).

One method per module; each lists its public names in ``__all__`` and this package re-exports them.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
