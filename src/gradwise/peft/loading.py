"""Loading a saved PEFT adapter whether or not it carries a gradwise custom LoRA layer (DynMoLE, DiffoRA).

PEFT 0.21.2 does not serialise the custom-layer mapping of ``LoraConfig._register_custom_module``: a DynMoLE or
DiffoRA adapter saved with ``save_pretrained`` and reloaded with ``PeftModel.from_pretrained`` comes back as plain
LoRA layers (their extra tensors reported as unexpected keys, the update computed wrongly). :func:`load_adapter`
reads ``adapter_config.json`` first; when it names a gradwise adapter (the ``gradwise_adapter`` field that
``get_dynmole_model`` / ``get_diffora_model`` write), it rebuilds that method's config and layer mapping and hands
the result to ``PeftModel.from_pretrained(..., config=...)``; any other adapter goes to PEFT unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from gradwise.peft._common import CUSTOM_ADAPTERS, GRADWISE_KEY

__all__ = ["load_adapter"]


def load_adapter(model: nn.Module, path: str | Path, adapter_name: str = "default", *, is_trainable: bool = False,
                 **kwargs: Any):
    """Wraps ``model`` (the base model, without adapters) with the PEFT adapter saved in the folder ``path``.

    A gradwise custom-layer adapter (``adapter_config.json`` has a ``gradwise_adapter`` entry) is rebuilt with
    its own layers; any other adapter is loaded by ``peft.PeftModel.from_pretrained`` as it is. ``is_trainable``
    and ``kwargs`` pass through to ``from_pretrained``. Returns the ``PeftModel``.
    """
    config_file = Path(path) / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"Invalid path: {str(path)!r} has no adapter_config.json (accepted: a folder written by "
                         "save_pretrained)")
    saved = json.loads(config_file.read_text())
    from peft import PeftModel

    custom = saved.get(GRADWISE_KEY)
    if custom is None:
        return PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name, is_trainable=is_trainable,
                                         **kwargs)
    import gradwise.peft  # noqa: F401  (imports every adapter module, filling CUSTOM_ADAPTERS)

    method = custom.get("method") if isinstance(custom, dict) else None
    if method not in CUSTOM_ADAPTERS:
        raise ValueError(f"Invalid adapter at {str(path)!r}: gradwise adapter {method!r} is unknown (accepted: "
                         f"one of {sorted(CUSTOM_ADAPTERS)})")
    config_cls, build = CUSTOM_ADAPTERS[method]
    lora = build(config_cls(**custom.get("config", {})))
    # Fields PEFT saved that our builder does not set (e.g. base_model_name_or_path, revision) come back as saved.
    for key in ("base_model_name_or_path", "revision", "task_type"):
        if saved.get(key) is not None:
            setattr(lora, key, saved[key])
    return PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name, is_trainable=is_trainable,
                                     config=lora, **kwargs)
