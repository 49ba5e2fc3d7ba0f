"""The online loop (being split into modules; see loop)."""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
