"""Parameter-efficient fine-tuning: adapters that load in HF PEFT (``peft`` is optional and imported lazily,
like ``gradwise.preference.trl_adapter``), optimizers that fine-tune a sparse subset of the weights (SaRA) and
pruning of fine-tuning deltas.

One method per module; each lists its public names in ``__all__`` and this package re-exports them.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
