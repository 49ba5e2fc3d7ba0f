"""Hugging Face transformers attention for :class:`gradwise.metrics.AttentionLogitMonitor`.

Transformers (5.x) runs the core of every attention layer through the function that
``ALL_ATTENTION_FUNCTIONS`` maps ``config._attn_implementation`` to, called as
``fn(module, query, key, value, attention_mask, scaling=..., dropout=..., **kwargs)`` with ``query``/``key``
per head [B, H, L, d] after the rotary embedding and any cache update. :class:`HFAttentionTap` registers a
wrapper implementation under a private name (``"gradwise_logit_monitor:" + original``) that hands the call's
``query``, ``key`` and mask to a callback and then calls the original implementation with the very same
arguments, and points the attention layers' configs at it until :meth:`HFAttentionTap.remove`.
transformers is imported only here, and only when a model holds such layers.
"""
from __future__ import annotations

import inspect
import math
import sys
import weakref
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["PREFIX", "SUPPORTED_IMPLEMENTATIONS", "HFAttentionTap", "hf_attention_layers", "hf_max_logit"]

PREFIX = "gradwise_logit_monitor:"
# the implementations whose masks the measurement understands (a 4D bool/additive float tensor, or None with
# sdpa's is_causal); flash attention gets 2D padding masks and packed sequences, flex attention BlockMasks
SUPPORTED_IMPLEMENTATIONS = ("eager", "sdpa")

# module -> {tap id: callback}; config id -> [config, original implementation, number of taps]
_CALLBACKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CONFIGS: dict[int, list] = {}


def hf_attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every transformers attention layer in ``model``: a module with a ``config``
    carrying ``_attn_implementation`` whose ``forward`` dispatches through ``ALL_ATTENTION_FUNCTIONS``."""
    if "transformers" not in sys.modules:  # no transformers model can exist without it
        return []
    out = []
    for name, module in model.named_modules():
        if not hasattr(getattr(module, "config", None), "_attn_implementation"):
            continue
        code = getattr(inspect.unwrap(type(module).forward), "__code__", None)
        if code is not None and "ALL_ATTENTION_FUNCTIONS" in code.co_names:
            out.append((name or type(module).__name__, module))
    return out


def _original(config: Any) -> str | None:
    impl = config._attn_implementation
    if isinstance(impl, str) and impl.startswith(PREFIX):
        return _CONFIGS[id(config)][1]
    return impl


def _eager(module: nn.Module) -> Callable | None:
    """The model's own eager attention (the default its forward passes to ``get_interface``)."""
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def _wrapper(original: str) -> Callable:
    from transformers import AttentionInterface

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        for callback in list(_CALLBACKS.get(module, {}).values()):
            callback(module, query, key, attention_mask, kwargs, original)
        impl = _eager(module) if original == "eager" else AttentionInterface()[original]
        return impl(module, query, key, value, attention_mask, *args, **kwargs)
    return attention


class HFAttentionTap:
    """Call ``callback(module, query, key, attention_mask, kwargs, implementation)`` before each attention
    call of the given transformers attention layers; :meth:`remove` restores their configs."""

    def __init__(self, layers: list[tuple[str, nn.Module]], callback: Callable) -> None:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        configs = {id(m.config): m.config for _, m in layers}
        for name, module in layers:
            impl = _original(module.config)
            if impl not in SUPPORTED_IMPLEMENTATIONS:
                raise ValueError(f"Invalid model: attention layer {name} uses the {impl!r} attention implementation "
                                 f"(accepted: {', '.join(SUPPORTED_IMPLEMENTATIONS)}; load or "
                                 "set_attn_implementation the model with one of them)")
            if impl == "eager" and _eager(module) is None:
                raise ValueError(f"Invalid model: attention layer {name} ({type(module).__name__}) has no "
                                 "eager_attention_forward in its modeling module (accepted: attn_implementation='sdpa')")
        self._modules = [m for _, m in layers]
        self._configs = list(configs)
        masks = AttentionMaskInterface()
        for cid, config in configs.items():
            if cid in _CONFIGS:
                _CONFIGS[cid][2] += 1
                continue
            impl = config._attn_implementation
            AttentionInterface.register(PREFIX + impl, _wrapper(impl))
            AttentionMaskInterface.register(PREFIX + impl, masks[impl])
            _CONFIGS[cid] = [config, impl, 1]
            # the attribute behind the _attn_implementation property, set on this config alone (the setter
            # would also overwrite sub-configs, which may use other implementations)
            config._attn_implementation_internal = PREFIX + impl
        for module in self._modules:
            _CALLBACKS.setdefault(module, {})[id(self)] = callback

    def remove(self) -> None:
        for module in self._modules:
            _CALLBACKS.get(module, {}).pop(id(self), None)
        for cid in self._configs:
            entry = _CONFIGS[cid]
            entry[2] -= 1
            if not entry[2]:
                entry[0]._attn_implementation_internal = entry[1]
                del _CONFIGS[cid]
        self._modules, self._configs = [], []


def hf_max_logit(query: Tensor, key: Tensor, attention_mask: Any, kwargs: dict, implementation: str,
                 module: nn.Module, use_masks: bool = True) -> float:
    """``max |q . k| * scaling`` over batch, heads, queries and the keys the mask allows, as the
    implementation reads it: a bool mask allows True, an additive float mask blocks values at or below half
    the dtype's minimum (HF fills with ``finfo.min`` or ``-inf``); with no mask, sdpa is causal (upper-left
    aligned) when the call's ``is_causal`` (default: ``module.is_causal``, else True) says so and there is more
    than one query, eager allows every key. Grouped-query keys are repeated per query head as ``repeat_kv``."""
    with torch.no_grad():
        q, k = query.float(), key.float()
        if k.shape[1] != q.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scaling = kwargs.get("scaling")
        scaling = q.shape[-1] ** -0.5 if scaling is None else float(scaling)
        z = (q @ k.transpose(-1, -2)).mul_(scaling).abs_()
        lq, lk = z.shape[-2], z.shape[-1]
        blocked = None
        if use_masks and torch.is_tensor(attention_mask):
            m = attention_mask[..., :lk]
            blocked = ~m if m.dtype == torch.bool else m <= torch.finfo(m.dtype).min / 2
        elif use_masks and attention_mask is None and implementation == "sdpa" and lq > 1:
            causal = kwargs.get("is_causal")
            if causal if causal is not None else getattr(module, "is_causal", True):
                blocked = torch.ones(lq, lk, dtype=torch.bool, device=z.device).triu(1)
        if blocked is not None:
            z = z.masked_fill(blocked, float("-inf"))
        return float(z.max().item()) if z.numel() else math.nan
