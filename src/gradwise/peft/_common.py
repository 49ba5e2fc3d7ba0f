"""Pieces the PEFT custom-layer adapters share: a ``LoraConfig`` that records which gradwise adapter built it, and
the table :func:`gradwise.peft.loading.load_adapter` reads to rebuild one.

PEFT 0.21.2 takes out-of-tree layers only through the experimental ``LoraConfig._register_custom_module``, and that
mapping is not written to ``adapter_config.json``. So every gradwise custom-layer adapter (DynMoLE, DiffoRA) wraps
its model with :func:`lora_config_for`'s config: a ``LoraConfig`` subclass with one more field,
``gradwise_adapter = {"method": name, "config": {...}}``, which PEFT's ``save_pretrained`` writes alongside the
LoRA fields. ``load_adapter`` reads it back, rebuilds the method's config and layer mapping from
:data:`CUSTOM_ADAPTERS` and lets PEFT load the weights. PEFT's own ``PeftModel.from_pretrained`` ignores the
extra field (with a warning) and would build plain LoRA layers: use ``load_adapter``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

__all__ = ["CUSTOM_ADAPTERS", "GRADWISE_KEY", "register_custom_adapter", "lora_config_for", "config_to_json"]

GRADWISE_KEY = "gradwise_adapter"

# method name -> (its config dataclass, config -> LoraConfig with the custom layer registered)
CUSTOM_ADAPTERS: dict[str, tuple[type, Callable[[Any], Any]]] = {}


def register_custom_adapter(method: str, config_cls: type, build: Callable[[Any], Any]) -> None:
    """Lets :func:`gradwise.peft.loading.load_adapter` rebuild ``method``'s adapters: ``build(config)`` returns
    the ``LoraConfig`` (custom layer registered) that ``config_cls(**saved)`` describes."""
    CUSTOM_ADAPTERS[method] = (config_cls, build)


def config_to_json(config: Any) -> dict:
    """A gradwise adapter config dataclass as JSON-ready values (sets of module names become sorted lists)."""
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = sorted(v) if isinstance(v, (set, frozenset)) else list(v) if isinstance(v, tuple) else v
    return out


@functools.cache
def _config_class() -> type:
    from peft import LoraConfig

    @dataclasses.dataclass
    class GradwiseLoraConfig(LoraConfig):
        """PEFT's ``LoraConfig`` plus ``gradwise_adapter``: which gradwise custom layer it carries, and its
        settings (saved in ``adapter_config.json``; read back by ``gradwise.peft.load_adapter``)."""

        gradwise_adapter: dict | None = dataclasses.field(default=None)

    return GradwiseLoraConfig


def lora_config_for(method: str, config: Any, layer: type, **lora_kw: Any):
    """A ``LoraConfig`` (``lora_kw`` are its fields) recording ``method`` and ``config`` under
    ``gradwise_adapter``, with ``layer`` registered as the custom LoRA layer of ``nn.Linear``."""
    from torch import nn

    lora = _config_class()(gradwise_adapter={"method": method, "config": config_to_json(config)}, **lora_kw)
    lora._register_custom_module({nn.Linear: layer})
    return lora
