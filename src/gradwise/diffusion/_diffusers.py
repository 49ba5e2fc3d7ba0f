"""Lazy access to diffusers (the optional ``diffusion`` extra): gradwise.diffusion imports without it, and
does not import it until a guider or scheduler is built (importing diffusers takes seconds, and every
``gradwise.registry.methods()`` call imports this package)."""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require_diffusers"]

INSTALL_HINT = "pip install 'diffusers==0.42.*' (or gradwise[diffusion])"


def require_diffusers(module: str = "diffusers") -> ModuleType:
    """Import ``module`` (a diffusers module), or raise ImportError saying how to install diffusers."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - exercised only without diffusers
        raise ImportError(f"{module} is needed for gradwise's guiders and samplers: {INSTALL_HINT}") from e
