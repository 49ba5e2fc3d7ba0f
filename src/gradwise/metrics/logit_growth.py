"""Attention-logit growth monitor (Wortsman et al., 2023, §3.1.1): the largest attention logit
``max |q . k| / sqrt(d_h)`` of each attention layer, recorded by forward hooks on any training loop."""
from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_bool, check_int
from gradwise.metrics._hf_attention import HFAttentionTap, hf_attention_layers, hf_max_logit
from gradwise.registry import register

__all__ = ["AttentionLogitMonitor", "attention_logits"]


def _batch_major(x: Tensor, batch_first: bool) -> Tensor:
    if x.dim() == 2:  # unbatched [L, E]
        return x[None]
    return x if batch_first else x.transpose(0, 1)


def _mha_qk(mha: nn.MultiheadAttention, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
    """``nn.MultiheadAttention``'s per-head queries and keys [B, H, L, d_h] (before the 1/sqrt(d_h) scale),
    recomputed from its input projection as its forward does, ``bias_k`` and ``add_zero_attn`` keys included."""
    e, h = mha.embed_dim, mha.num_heads
    dh = e // h
    if mha.in_proj_weight is not None:
        wq, wk, _ = mha.in_proj_weight.split(e)
    else:
        wq, wk = mha.q_proj_weight, mha.k_proj_weight
    bq, bk = mha.in_proj_bias.split(e)[:2] if mha.in_proj_bias is not None else (None, None)
    q = F.linear(_batch_major(query, mha.batch_first), wq, bq)
    k = F.linear(_batch_major(key, mha.batch_first), wk, bk)
    if mha.bias_k is not None:
        k = torch.cat([k, mha.bias_k.reshape(1, 1, e).expand(k.shape[0], 1, e)], 1)
    if mha.add_zero_attn:
        k = torch.cat([k, k.new_zeros(k.shape[0], 1, e)], 1)
    return (q.unflatten(-1, (h, dh)).transpose(1, 2), k.unflatten(-1, (h, dh)).transpose(1, 2))


def _blocked(attn_mask: Any, key_padding_mask: Any, is_causal: bool, q: Tensor, k: Tensor) -> Tensor | None:
    """Bool [B or 1, H or 1, Lq, Lk], True where a query may not attend (bool mask True, or additive -inf);
    keys beyond the masks' width (``bias_k``, ``add_zero_attn``) are allowed, as torch pads the masks."""
    b, h, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    out = torch.zeros(1, 1, lq, lk, dtype=torch.bool, device=q.device)

    def as_blocked(m: Tensor) -> Tensor:
        return m if m.dtype == torch.bool else m == float("-inf")

    if torch.is_tensor(attn_mask):
        m = as_blocked(attn_mask)
        m = m[None, None] if m.dim() == 2 else m.reshape(b, h, *m.shape[-2:])
        out = out | F.pad(m, (0, lk - m.shape[-1]))
    elif is_causal:
        out = out | torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(1)
    if torch.is_tensor(key_padding_mask):
        m = as_blocked(key_padding_mask).reshape(-1, key_padding_mask.shape[-1])
        out = out | F.pad(m, (0, lk - m.shape[-1]))[:, None, None, :]
    return out


def attention_logits(q: Tensor, k: Tensor) -> Tensor:
    """``q @ k^T / sqrt(d_h)`` for per-head ``q`` [..., Lq, d_h] and ``k`` [..., Lk, d_h]."""
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


@register(kind="metric", paper="Small-scale proxies for large-scale Transformer training instabilities",
          year=2023, arxiv="2309.14322", code=None,
          summary="forward hooks recording max |q.k|/sqrt(d_h) per attention layer (attention-logit growth)")
class AttentionLogitMonitor:
    r"""Record each attention layer's largest attention logit, ``max |z_ij|``, ``z_ij = <q_i, k_j> / sqrt(d_h)``.

    Paper: Wortsman et al., "Small-scale proxies for large-scale Transformer
    training instabilities", 2023, arXiv:2309.14322, §3.1.1: without
    qk-layernorm the attention logits of small models grow large at high
    learning rates (as Dehghani et al., arXiv:2302.05442, saw at 8B+
    parameters), collapsing the attention to one-hot; the paper plots the
    max attention logit per layer. No official code for the measurement.

    ``AttentionLogitMonitor(model)`` registers a forward pre-hook on every
    submodule of ``model`` that is either

    * an ``nn.MultiheadAttention``: the hook recomputes the per-head ``q``
      and ``k`` from the layer's input projection (``in_proj_weight`` or
      ``q_proj_weight``/``k_proj_weight``, ``in_proj_bias``, ``bias_k``,
      ``add_zero_attn``) and the hook's ``query``/``key`` inputs, i.e. one
      more pair of projections per call; or
    * any module with a ``project_qk(query, key) -> (q, k)`` method returning
      its per-head queries and keys [B, H, L, d_h] before the ``1/sqrt(d_h)``
      scale, as :class:`gradwise.nn.QKNormAttention` does (there: after the
      layernorms). This is duck typing, so metrics need not import ``nn``;
      a custom attention joins by growing such a method; or
    * a Hugging Face transformers attention layer (tested on transformers
      5.25 with Llama, GQA and RoPE included, and GPT-2): a module with a
      ``config`` whose ``forward`` dispatches through
      ``ALL_ATTENTION_FUNCTIONS``, named by its module path (e.g.
      ``model.layers.0.self_attn``). For as long as the monitor is open, the
      layers' configs point ``_attn_implementation`` at a wrapper registered
      with ``AttentionInterface`` (and ``AttentionMaskInterface``, with the
      original's mask function) as ``"gradwise_logit_monitor:<original>"``;
      it reads the call's ``query``/``key`` (after RoPE and any cache, key
      heads repeated per query head for GQA) and ``scaling``, then calls the
      original implementation with the same arguments, so outputs and
      gradients are bit-identical. The maximum is over the keys the mask HF
      passes allows (bool True; additive float above ``finfo.min / 2``; no
      mask: causal under sdpa when ``is_causal``, all keys under eager).
      :meth:`close` restores each config's implementation. Supported
      implementations: ``"eager"`` and ``"sdpa"`` (others raise ValueError:
      flash attention's packed/2D masks and flex attention's BlockMasks are
      not read). Caveats: code that compares ``config._attn_implementation``
      to a name sees the private one while open (e.g. GPT-2's eager
      ``reorder_and_upcast_attn`` path then runs the plain eager function);
      gradient checkpointing re-runs attention in backward, which counts as
      calls; transformers is only imported by a model that already has it.

    The hook binds the call's arguments to the layer's ``forward`` signature,
    so positional and keyword calls both work; logits where the call's
    ``attn_mask``/``key_padding_mask`` (bool True, or float ``-inf``) or
    ``is_causal`` (without a mask; for a call without an ``is_causal``
    argument, the module's ``causal`` attribute, as the self-attention of
    :class:`gradwise.nn.TransformerBlock` has) forbid attention are left out, the
    maximum is over batch, heads, queries and allowed keys. Everything runs
    under ``torch.no_grad`` and reads one number per layer and call
    (``.item()``: a host sync; use ``every`` to record one call in ``every``).
    Caveat: ``nn.TransformerEncoderLayer``'s inference fast path (eval mode,
    no grad) bypasses ``self_attn.forward`` and so its hooks.

    Attributes (the same for every kind of layer): ``history`` (name -> list of recorded maxima, one per
    recorded call), ``latest`` (name -> last value), :meth:`max` (the
    largest latest value), :meth:`reset`, :meth:`close` (removes every
    hook and restores the HF configs; also on leaving a ``with`` block).

    Example::

        >>> model = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4), 2)
        >>> with AttentionLogitMonitor(model) as mon:
        ...     model(torch.randn(5, 2, 32))
        ...     print(sorted(mon.latest))
        ['layers.0.self_attn', 'layers.1.self_attn']
    """

    def __init__(self, model: nn.Module, *, every: int = 1, use_masks: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} (accepted: an nn.Module)")
        self.every = check_int("every", every, 1)
        self.use_masks = check_bool("use_masks", use_masks)
        self.history: dict[str, list[float]] = {}
        self._calls: dict[str, int] = {}
        self._handles = []
        hf_layers = hf_attention_layers(model)
        if hf_layers:  # first: its checks may raise, with nothing hooked yet
            names = {id(m): name for name, m in hf_layers}
            self._handles.append(HFAttentionTap(hf_layers, lambda module, *call: self._hf_record(names[id(module)],
                                                                                              module, *call)))
            for name, _ in hf_layers:
                self._track(name)
        hf_modules = set(names) if hf_layers else set()
        for name, module in model.named_modules():
            if id(module) in hf_modules:
                continue
            if isinstance(module, nn.MultiheadAttention) or callable(getattr(module, "project_qk", None)):
                name = name or type(module).__name__
                self._track(name)
                self._handles.append(module.register_forward_pre_hook(self._hook(name), with_kwargs=True))
        if not self._handles:
            raise ValueError(f"Invalid model: {type(model).__name__} has no nn.MultiheadAttention, no module "
                             "with a project_qk(query, key) method and no Hugging Face transformers attention "
                             "(accepted: a model with attention layers)")

    def _track(self, name: str) -> None:
        self.history[name] = []
        self._calls[name] = 0

    @property
    def latest(self) -> dict[str, float]:
        return {name: h[-1] for name, h in self.history.items() if h}

    def max(self) -> float:
        """The largest of the latest values (NaN before any call)."""
        values = list(self.latest.values())
        return max(values) if values else float("nan")

    def reset(self) -> None:
        for name in self.history:
            self.history[name] = []
            self._calls[name] = 0

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> AttentionLogitMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _due(self, name: str) -> bool:
        self._calls[name] += 1
        return not (self._calls[name] - 1) % self.every

    def _hf_record(self, name: str, module: nn.Module, query: Tensor, key: Tensor, mask: Any, kwargs: dict,
                   implementation: str) -> None:
        if self._due(name):
            self.history[name].append(hf_max_logit(query, key, mask, kwargs, implementation, module,
                                                   self.use_masks))

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self._due(name):
                self.history[name].append(self._measure(module, args, kwargs))
        return hook

    def _measure(self, module: nn.Module, args: tuple, kwargs: dict) -> float:
        bound = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments
        query = bound.get("query", args[0] if args else None)
        key = bound.get("key", query)
        with torch.no_grad():
            if callable(getattr(module, "project_qk", None)):
                q, k = module.project_qk(query, key)
            else:
                q, k = _mha_qk(module, query, key)
            z = attention_logits(q.float(), k.float()).abs()
            if self.use_masks:
                # a self-attention that is causal by construction (gradwise.nn.TransformerBlock's, with a
                # ``causal`` attribute and no is_causal argument) masks the future too
                causal = bound.get("is_causal", getattr(module, "causal", False))
                blocked = _blocked(bound.get("attn_mask"), bound.get("key_padding_mask"), bool(causal), q, k)
                z = z.masked_fill(blocked, float("-inf")) if blocked is not None else z
            return float(z.max().item()) if z.numel() else float("nan")
