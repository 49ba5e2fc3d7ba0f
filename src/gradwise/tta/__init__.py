"""Test-time adaptation: adapting a trained classifier to a shifted test distribution from unlabeled test
batches alone, as they arrive.

Methods here wrap any ``nn.Module`` classifier and are called batch by batch. LAME adapts the outputs
only (no weight changes); the wrappers that adapt weights change the model in place.

One method per module; each lists its public names in ``__all__`` and this package re-exports them.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
