"""Build an optimizer by name, with weight decay kept off biases and normalization weights.

The same convenience as ``timm.optim.create_optimizer_v2`` and
``pytorch_optimizer.create_optimizer``::

    from gradwise.optim import create, param_groups

    opt = create("spam", model, lr=1e-3, weight_decay=0.05)        # no decay on biases and norms
    opt = create("AdamW", model, lr=3e-4, weight_decay=0.1)        # gradwise's AdamW (torch's math)
    opt = create("orthograd", model, base_optimizer_cls="adamw", lr=1e-3)
    groups = param_groups(model, 0.05)                             # the groups, for any optimizer

Names are resolved case-insensitively, ignoring ``-``, ``_`` and spaces
(``"stable_spam"`` is ``StableSPAM``):

1. gradwise's optimizers and optimizer wrappers, from the registry
   (``gradwise methods --kind optimizer``), including their aliases;
2. then ``torch.optim``'s optimizers (``"adam"``, ``"sgd"``, ``"adafactor"``,
   ``"muon"``, ...), so one call site can switch between gradwise's methods and
   the baselines a user would otherwise pick. Where a torch name is also a
   gradwise one (``"AdamW"``: gradwise's has torch's math and defaults),
   gradwise's wins, and the prefix ``"torch.optim."``
   (``"torch.optim.AdamW"``) always means torch's.

An unknown name is a ``ValueError`` that lists the close matches and every
accepted name.
"""
from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

__all__ = ["create", "param_groups", "decay_split", "optimizer_names", "resolve", "is_norm_module",
           "NO_DECAY"]

#: Default name patterns kept out of weight decay: biases and normalization weights.
NO_DECAY: tuple[str, ...] = ("bias", "norm")

_KINDS = ("optimizer", "optimizer-wrapper")
_TORCH_PREFIX = "torch.optim."

# Normalization layers by type; nn.RMSNorm exists from torch 2.4.
_NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
                                 nn.CrossMapLRN2d) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
# Norms from other libraries (LlamaRMSNorm, T5LayerNorm, FusedLayerNorm, ...) are recognized by their class name.
_NORM_NAME = re.compile(r"norm(\d+d)?$", re.IGNORECASE)


def _key(name: str) -> str:
    return re.sub(r"[\s_-]+", "", name).lower()


def _gradwise_optimizers() -> dict[str, tuple[str, Any]]:
    """normalized name or alias -> (public name, registry record)."""
    from gradwise.registry import methods

    out: dict[str, tuple[str, Any]] = {}
    for m in methods():
        if m.kind in _KINDS:
            for n in (m.name, *m.aliases):
                out.setdefault(_key(n), (m.name, m))
    return out


def _torch_optimizers() -> dict[str, type[Optimizer]]:
    """normalized name -> torch.optim class (every public Optimizer subclass of ``torch.optim``)."""
    out = {}
    for n in dir(torch.optim):
        obj = getattr(torch.optim, n)
        if not n.startswith("_") and isinstance(obj, type) and issubclass(obj, Optimizer) and obj is not Optimizer:
            out[_key(n)] = obj
    return out


def optimizer_names() -> dict[str, list[str]]:
    """The names :func:`create` accepts: ``{"gradwise": [...], "torch.optim": [...]}``."""
    ours = sorted({name for name, _ in _gradwise_optimizers().values()}, key=str.lower)
    theirs = sorted((c.__name__ for c in _torch_optimizers().values()), key=str.lower)
    return {"gradwise": ours, "torch.optim": theirs}


def resolve(name: str | type[Optimizer]) -> type[Optimizer]:
    """The optimizer class for ``name`` (see the module docstring for the rules); a class is returned as is."""
    if isinstance(name, type):
        if not issubclass(name, Optimizer):
            raise ValueError(f"Invalid name: {name!r} is a class but not a torch.optim.Optimizer subclass")
        return name
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"Invalid name: {name!r} (accepted: an optimizer name such as 'spam' or 'adamw', "
                         "or an Optimizer class)")
    text = name.strip()
    torch_only = text.lower().startswith(_TORCH_PREFIX)
    key = _key(text[len(_TORCH_PREFIX):] if torch_only else text)
    ours, theirs = _gradwise_optimizers(), _torch_optimizers()
    if not torch_only and key in ours:
        return ours[key][1].load()
    if key in theirs:
        return theirs[key]
    _refuse_non_optimizer(text, key)
    names = optimizer_names()
    candidates = names["gradwise"] + names["torch.optim"]
    close = difflib.get_close_matches(key, [_key(c) for c in candidates], n=3, cutoff=0.6)
    by_key = {_key(c): c for c in reversed(candidates)}  # gradwise's spelling first where both exist
    hint = f"; did you mean {', '.join(repr(by_key[c]) for c in close)}?" if close else ""
    raise ValueError(f"Invalid name: {name!r} is not a gradwise or torch.optim optimizer{hint} "
                     f"(accepted, case-insensitive: gradwise: {', '.join(names['gradwise'])}; "
                     f"torch.optim: {', '.join(names['torch.optim'])})")


def _refuse_non_optimizer(text: str, key: str) -> None:
    """A registered method that is not an optimizer (a gradient transform, a loss) gets its own message."""
    from gradwise.registry import methods

    for m in methods():
        if m.kind not in _KINDS and key in {_key(n) for n in (m.name, *m.aliases)}:
            extra = (f"; pass it to an optimizer as grad_transforms=[{m.name}()]" if m.kind == "grad-transform"
                     else "")
            raise ValueError(f"Invalid name: {text!r} is a gradwise {m.kind}, not an optimizer{extra}")


def is_norm_module(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer: torch's (BatchNorm*, SyncBatchNorm, InstanceNorm*,
    LayerNorm, GroupNorm, RMSNorm, LocalResponseNorm) by type, others by a class name ending in ``Norm``
    (``LlamaRMSNorm``, ``T5LayerNorm``, ``FusedLayerNorm``, ``BatchNorm2d``-style suffixes included)."""
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


def _check_patterns(no_decay) -> tuple[str, ...]:
    if no_decay is None:
        return ()
    if isinstance(no_decay, str) or not isinstance(no_decay, Iterable):
        raise ValueError(f"Invalid no_decay: {no_decay!r} (accepted: None or a sequence of name patterns, "
                         "e.g. ('bias', 'norm'))")
    patterns = tuple(no_decay)
    if not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"Invalid no_decay: {no_decay!r} (accepted: None or a sequence of non-empty strings)")
    return tuple(p.lower() for p in patterns)


def _named_decisions(model: nn.Module, patterns: tuple[str, ...], skip_1d: bool, skip_norms: bool
                     ) -> list[tuple[str, nn.Parameter, bool]]:
    """(name, parameter, decayed) for each trainable parameter, in ``model.parameters()`` order.

    A parameter shared by several modules (tied weights) is listed once, under its first name, and is
    decayed only if no place it appears excludes it.
    """
    seen: dict[int, int] = {}
    out: list[tuple[str, nn.Parameter, bool]] = []
    for mod_name, module in model.named_modules():
        norm = skip_norms and is_norm_module(module)
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            parts = name.lower().split(".")
            excluded = (norm or (skip_1d and p.dim() <= 1)
                        or any(pat in part for pat in patterns for part in parts))
            if id(p) in seen:
                i = seen[id(p)]
                out[i] = (out[i][0], p, out[i][2] and not excluded)
                continue
            seen[id(p)] = len(out)
            out.append((name, p, not excluded))
    return out


def decay_split(model: nn.Module, *, no_decay: Sequence[str] | None = NO_DECAY, skip_1d: bool = True,
                skip_norms: bool = True) -> tuple[list[str], list[str]]:
    """The names of ``model``'s trainable parameters that :func:`param_groups` decays, and those it does not.

    A parameter is kept out of weight decay when any of these holds:

    * ``skip_1d`` and it has at most one dimension (biases, norm scales and shifts, per-channel gains);
    * ``skip_norms`` and it belongs directly to a normalization module (:func:`is_norm_module`), whatever
      its shape;
    * a pattern of ``no_decay`` occurs, case-insensitively, in a component of its dotted name
      (``"norm"`` matches ``blocks.0.norm1.weight``; ``"bias"`` matches ``head.bias``).

    Parameters with ``requires_grad=False`` are left out of both lists.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
    decisions = _named_decisions(model, _check_patterns(no_decay), skip_1d, skip_norms)
    return [n for n, _, d in decisions if d], [n for n, _, d in decisions if not d]


def _check_decay(weight_decay) -> float:
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"Invalid weight_decay: {weight_decay!r} (accepted: a number >= 0)")
    return float(weight_decay)


def param_groups(model: nn.Module | Iterable, weight_decay: float, *, no_decay: Sequence[str] | None = NO_DECAY,
                 skip_1d: bool = True, skip_norms: bool = True) -> list[dict[str, Any]]:
    """Two parameter groups: ``weight_decay`` on weights, ``0.0`` on biases and normalization weights.

    ``model`` is an ``nn.Module`` (names and module types are used, see :func:`decay_split`), an
    iterable of ``(name, parameter)`` pairs (``model.named_parameters()``: names and shapes), or of
    parameters (shapes only: the ``skip_1d`` rule). Groups are ``[{"params": decayed, "weight_decay":
    weight_decay}, {"params": not_decayed, "weight_decay": 0.0}]``, in parameter order, leaving out an
    empty one; frozen parameters (``requires_grad=False``) are left out. Pass the result to any
    ``torch.optim.Optimizer``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
        >>> [(len(g["params"]), g["weight_decay"]) for g in param_groups(model, 0.05)]
        [(2, 0.05), (4, 0.0)]
    """
    wd = _check_decay(weight_decay)
    patterns = _check_patterns(no_decay)
    if isinstance(model, nn.Module):
        decisions = [(p, d) for _, p, d in _named_decisions(model, patterns, skip_1d, skip_norms)]
    else:
        if isinstance(model, torch.Tensor) or not isinstance(model, Iterable):
            raise ValueError(f"Invalid model: {type(model).__name__} (accepted: an nn.Module, "
                             "model.named_parameters(), or an iterable of parameters)")
        decisions, seen = [], set()
        for item in model:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                name, p = item
                parts = name.lower().split(".")
                named = any(pat in part for pat in patterns for part in parts)
            elif isinstance(item, torch.Tensor):
                p, named = item, False
            else:
                raise ValueError(f"Invalid model: an item is {type(item).__name__} (accepted: parameters or "
                                 "(name, parameter) pairs; pass ready-made param-group dicts to the optimizer)")
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            decisions.append((p, not (named or (skip_1d and p.dim() <= 1))))
    groups = [{"params": [p for p, d in decisions if d], "weight_decay": wd},
              {"params": [p for p, d in decisions if not d], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _init_parameters(cls: type) -> list[str]:
    """Named arguments of ``cls(params, ...)``, following ``**kwargs`` up the base classes' ``__init__``."""
    P = inspect.Parameter
    names: list[str] = []
    first = True
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            break
        # a base class gets only keywords through ``**kwargs`` (its positional ones are the subclass's business)
        kinds = (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY) if first else (P.KEYWORD_ONLY,)
        names += [q.name for q in params if q.name not in ("self", "params") and q.name not in names
                  and q.kind in kinds]
        first = False
        if not any(q.kind is P.VAR_KEYWORD for q in params) or klass is Optimizer:
            break
    return names


def _accepts(cls: type, name: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def create(name: str | type[Optimizer], model: nn.Module | Iterable, *, lr: float | None = None,
           weight_decay: float | None = None, no_decay: Sequence[str] | None = NO_DECAY, skip_1d: bool = True,
           skip_norms: bool = True, **kwargs: Any) -> Optimizer:
    """The optimizer ``name`` over ``model``'s parameters, weight decay kept off biases and norms.

    Args:
        name: a gradwise optimizer (``"spam"``, ``"AdaBelief"``, ``"stable_spam"``, ``"orthograd"``), a
            ``torch.optim`` one (``"adam"``, ``"sgd"``; ``"torch.optim.AdamW"`` forces torch's), or an
            ``Optimizer`` class; case-insensitive, see the module docstring.
        model: an ``nn.Module``, ``model.named_parameters()``, an iterable of parameters, or a list of
            param-group dicts (used as given).
        lr: learning rate; ``None`` keeps the optimizer's default.
        weight_decay: ``None`` (default) keeps the optimizer's default and makes one group of all trainable
            parameters. A number builds the two groups of :func:`param_groups` (``weight_decay`` on
            weights, 0 on biases and normalization weights, by ``no_decay``, ``skip_1d`` and
            ``skip_norms``) and is also the optimizer's default for groups added later. With param-group
            dicts it is only that default.
        no_decay, skip_1d, skip_norms: what stays out of weight decay, see :func:`decay_split`.
        **kwargs: further arguments of the optimizer (``betas=(0.9, 0.95)``, ``momentum=0.9``; for
            ``orthograd``, ``base_optimizer_cls`` may be a name too: ``base_optimizer_cls="adamw"``).

    Returns:
        the optimizer, built as ``cls(params, lr=lr, weight_decay=weight_decay, **kwargs)`` (``lr`` and
        ``weight_decay`` only when given).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
        >>> opt = create("spam", model, lr=1e-3, weight_decay=0.05)
        >>> type(opt).__name__, [g["weight_decay"] for g in opt.param_groups]
        ('SPAM', [0.05, 0.0])
    """
    cls = resolve(name)
    if isinstance(kwargs.get("base_optimizer_cls"), str):
        kwargs["base_optimizer_cls"] = resolve(kwargs["base_optimizer_cls"])
    if lr is not None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float, torch.Tensor)):
            raise ValueError(f"Invalid lr: {lr!r} (accepted: a number, or None for the optimizer's default)")
        kwargs["lr"] = lr
    if isinstance(model, nn.Module):
        params: Any = model
    elif isinstance(model, Iterable) and not isinstance(model, torch.Tensor):
        params = list(model)
    else:
        raise ValueError(f"Invalid model: {type(model).__name__} (accepted: an nn.Module, "
                         "model.named_parameters(), an iterable of parameters, or param-group dicts)")
    if weight_decay is not None:
        wd = _check_decay(weight_decay)
        if not _accepts(cls, "weight_decay"):
            raise ValueError(f"Invalid weight_decay: {cls.__name__} takes no weight_decay argument")
        kwargs["weight_decay"] = wd
        if not (isinstance(params, list) and params and all(isinstance(g, dict) for g in params)):
            params = param_groups(params, wd, no_decay=no_decay, skip_1d=skip_1d, skip_norms=skip_norms)
    elif isinstance(params, nn.Module):
        params = [p for p in params.parameters() if p.requires_grad]
    elif params and isinstance(params[0], tuple):
        params = [p for _, p in params]
    try:
        return cls(params, **kwargs)
    except TypeError as err:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if unexpected is None:
            raise
        accepted = _init_parameters(cls)
        if not accepted:
            raise
        raise TypeError(f"{cls.__name__} got an unexpected argument {unexpected.group(1)!r} "
                        f"(accepted: {', '.join(accepted)})") from err
