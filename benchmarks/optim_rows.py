"""The optimizer benchmark's rows, read from the registry: each optimizer record's ``info["bench"]``.

``info["bench"]`` holds ``kwargs`` (for both sides), ``peer`` (a ``pytorch_optimizer`` class by name,
a builder of ``PEER_BUILDERS``, or ``torch.optim.<Name>``, built as ``torch.optim.<Name>(params,
**kwargs)``), and optionally ``peer_kwargs`` (the peer's own switches), ``peer_paths`` (its
implementations, each timed, the fastest counts), ``note`` and ``max_ratio_adam`` (target (c)).
No list of optimizer names is kept here: a new optimizer is benchmarked by registering it with
such a record. Used by ``optim_step.py``.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Method", "methods_from_registry", "GRADWISE_ALIASES", "PEER_BUILDERS", "gradwise_kwargs", "construct"]

Builder = Callable[[list[torch.Tensor], dict[str, Any]], torch.optim.Optimizer]


@dataclass(frozen=True)
class Method:
    """One benchmark row: a gradwise optimizer and its peer, from the optimizer's record.

    ``kwargs`` go to both sides; the gradwise class gets each under the name
    its signature uses (the peer's name, else an alias from
    ``GRADWISE_ALIASES``); names it lacks are dropped and reported.
    ``peer_kwargs`` are extra arguments for the peer only: switches that make
    it compute the same algorithm as the authors' code. ``load`` returns the
    gradwise class; ``peer`` builds the peer from the parameters and the
    merged kwargs; ``peer_source`` is the package it needs
    (``"pytorch_optimizer"`` or ``"torch"``).

    ``peer_paths``: the peer's implementations, each timed as its own
    candidate; the row's peer time is the fastest. pytorch_optimizer 4.1
    has a batched ("foreach") and a per-tensor ("loop") path for each of
    these, and which is faster depends on the device: on CPU the loop path
    of AdamP, SGDP and StableSPAM is about 2x faster than their foreach
    path (which trades host syncs for extra tensor work), while SPAM's loop
    path is about 2x slower.
    """

    name: str
    kwargs: dict[str, Any]
    peer_name: str
    peer: Builder
    load: Callable[[], type]
    peer_source: str = "pytorch_optimizer"
    peer_kwargs: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    peer_paths: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"foreach": {"foreach": True}, "loop": {"foreach": False}})
    max_ratio_adam: float | None = None


def _po(cls_name: str) -> Builder:
    def build(params, kw):
        import pytorch_optimizer as po

        return getattr(po, cls_name)(params, **kw)

    return build


def _torch_optim(cls_name: str) -> Builder:
    cls = getattr(torch.optim, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"Invalid peer: 'torch.optim.{cls_name}' (accepted: a torch.optim optimizer class)")

    def build(params, kw):
        return cls(params, **kw)

    return build


def _ortho_adamw(params, kw):
    # pytorch_optimizer's OrthoGrad wraps an optimizer; its batched projection
    # is only on by default on CUDA, so foreach=True is asked for explicitly
    # (on CPU it is ~20% faster than its per-tensor loop). The wrapped torch
    # AdamW runs either its foreach or its fused implementation.
    import pytorch_optimizer as po

    kw = dict(kw)
    inner = kw.pop("inner")
    adamw = torch.optim.AdamW(params, **{inner: True}, **kw)
    return po.OrthoGrad(adamw, foreach=True)


# pytorch_optimizer's argument name -> the gradwise name for the same setting.
GRADWISE_ALIASES: dict[str, tuple[str, ...]] = {
    "weight_decouple": ("decoupled_weight_decay",),
    "ams_bound": ("amsgrad",),
    "threshold": ("spike_threshold",),
    "grad_accu_steps": ("clip_delay",),
    "update_proj_gap": ("reset_interval",),
    "warmup_epoch": ("warmup_steps",),
    "theta": ("gamma3",),
    "t_max": ("beta1_schedule_steps",),
    "eta_min": ("beta1_min",),
}

# Peers that are neither one pytorch_optimizer class nor one torch.optim class, by the name records use.
PEER_BUILDERS: dict[str, Builder] = {"OrthoGrad(AdamW)": _ortho_adamw}

def methods_from_registry(family: str = "optim") -> tuple[Method, ...]:
    """One row per registered optimizer of ``family`` whose record has ``info["bench"]``, in registry order."""
    from gradwise.registry import methods

    rows = []
    for rec in methods(kind="optimizer", family=family):
        spec = rec.info.get("bench")
        if spec is None:
            continue
        peer = spec["peer"]
        extra: dict[str, Any] = {}
        if peer.startswith("torch.optim."):
            build, extra["peer_source"] = _torch_optim(peer.removeprefix("torch.optim.")), "torch"
            extra["peer_paths"] = {"default": {}}
        else:
            build = PEER_BUILDERS.get(peer) or _po(peer)
        if "peer_paths" in spec:
            extra["peer_paths"] = {k: dict(v) for k, v in spec["peer_paths"].items()}
        target = spec.get("max_ratio_adam")
        rows.append(Method(rec.name, dict(spec["kwargs"]), peer, build, rec.load,
                           peer_kwargs=dict(spec.get("peer_kwargs", {})), note=spec.get("note", ""),
                           max_ratio_adam=target, **extra))
    return tuple(rows)


def gradwise_kwargs(cls: type, kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """Map ``kwargs`` onto ``cls``'s named parameters.

    Returns the kwargs to pass, the renamed ones (``old->new``) and the
    dropped names. A class whose signature cannot be read, or that names
    nothing but ``params`` and ``**kwargs``, gets everything unchanged.
    """
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return dict(kwargs), [], []
    named = {n for n, p in sig.parameters.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    if not named - {"params"}:
        return dict(kwargs), [], []
    out, renamed, dropped = {}, [], []
    for k, v in kwargs.items():
        if k in named:
            out[k] = v
            continue
        alt = next((a for a in GRADWISE_ALIASES.get(k, ()) if a in named), None)
        if alt is None:
            dropped.append(k)
        else:
            out[alt] = v
            renamed.append(f"{k}->{alt}")
    return out, renamed, dropped


def construct(cls: type, params: list[torch.Tensor], kwargs: dict[str, Any],
               dropped: list[str]) -> torch.optim.Optimizer:
    """``cls(params, **kwargs)``, dropping (into ``dropped``) keywords it rejects."""
    kwargs = dict(kwargs)
    while True:
        try:
            return cls(params, **kwargs)
        except TypeError as exc:
            bad = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            if not bad or bad.group(1) not in kwargs:
                raise
            kwargs.pop(bad.group(1))
            dropped.append(bad.group(1))
