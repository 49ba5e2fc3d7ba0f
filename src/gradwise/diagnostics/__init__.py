"""Training diagnostics that observe a model without changing it (the empirical neural tangent kernel).

One method per module; each lists its public names in ``__all__`` and this package re-exports them.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
