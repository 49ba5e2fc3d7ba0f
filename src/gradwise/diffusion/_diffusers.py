"""Lazy access to diffusers (the optional ``diffusion`` extra): gradwise.diffusion imports without it, and
does not import it until a guider or scheduler is built (importing diffusers takes seconds, and every
``gradwise.registry.methods()`` call imports this package)."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["require_diffusers", "subclass_with_config"]

INSTALL_HINT = "pip install 'diffusers==0.42.*' (or gradwise[diffusion])"


def require_diffusers(module: str = "diffusers") -> ModuleType:
    """Import ``module`` (a diffusers module), or raise ImportError saying how to install diffusers."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - exercised only without diffusers
        raise ImportError(f"{module} is needed for gradwise's guiders and samplers: {INSTALL_HINT}") from e


def subclass_with_config(mixin: type, name: str, base_module: str, base_name: str, module: str,
                         **attrs: Any) -> type:
    """``class <name>(mixin, <base_module>.<base_name>)`` with ``mixin.__init__`` wrapped in diffusers'
    ``register_to_config`` (so ``config``, ``from_config`` and ``new`` work), named as if defined in
    ``module`` (the package, whose ``__getattr__`` builds it: pickling finds it there)."""
    base = getattr(require_diffusers(base_module), base_name)
    config_utils = require_diffusers("diffusers.configuration_utils")
    return type(name, (mixin, base), {"__init__": config_utils.register_to_config(mixin.__init__),
                                      "__module__": module, "__qualname__": name, "__doc__": mixin.__doc__, **attrs})
