"""diffusers' base classes that gradwise subclasses (the guider base, UniPC), or stand-ins when the optional
``diffusion`` extra is missing.

gradwise.diffusion imports without diffusers; a subclass built on a stand-in raises ImportError (saying
how to install the extra) when it is constructed, not when it is imported.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["BaseGuidance", "GuiderOutput", "UniPCMultistepScheduler", "register_to_config", "require_diffusers",
           "HAVE_DIFFUSERS"]

INSTALL_HINT = "pip install 'diffusers==0.42.*' (or gradwise[diffusion])"


def require_diffusers(module: str = "diffusers") -> ModuleType:
    """Import ``module`` (a diffusers module), or raise ImportError saying how to install diffusers."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - exercised only without diffusers
        raise ImportError(f"{module} is needed for gradwise's guiders and samplers: {INSTALL_HINT}") from e


try:
    from diffusers.configuration_utils import register_to_config
    from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput
    from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
    HAVE_DIFFUSERS = True
except ImportError:  # pragma: no cover - exercised only without diffusers
    HAVE_DIFFUSERS = False
    GuiderOutput = None

    def register_to_config(init: Any) -> Any:
        return init

    class BaseGuidance:  # type: ignore[no-redef]
        """Stand-in for ``diffusers.guiders.guider_utils.BaseGuidance``: constructing it raises ImportError."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            require_diffusers("diffusers.guiders")

    class UniPCMultistepScheduler:  # type: ignore[no-redef]
        """Stand-in for ``diffusers.UniPCMultistepScheduler``: constructing it raises ImportError."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            require_diffusers("diffusers.schedulers")
