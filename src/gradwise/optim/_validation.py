"""Hyperparameter checks every gradwise optimizer shares (messages name the argument and its range).

The generic checks are :mod:`gradwise._validate`'s; this module holds what
is particular to optimizers: a learning rate that may be a tensor, the
``fused``/``foreach``/``capturable``/``differentiable`` flags, and the
standard group entries (``betas``, ``eps``, ``weight_decay``, ``momentum``,
boolean flags) checked for every group.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import Tensor

from gradwise._validate import check_betas, check_range

__all__ = ["check_lr", "check_path_flags", "check_standard_group", "flag_names",
           "NOT_CAPTURABLE", "NOT_DIFFERENTIABLE"]

NOT_CAPTURABLE = ("gradwise's step computes per-tensor step counts, bias corrections and schedules as Python "
                  "numbers on the host, so it cannot be captured in a CUDA graph")
NOT_DIFFERENTIABLE = ("gradwise's update runs under torch.no_grad with in-place _foreach_ and fused-kernel "
                      "writes, which autograd cannot differentiate through")


def check_lr(lr: Any) -> None:
    """``lr >= 0``: a real number, or (as torch.optim accepts) a one-element real tensor."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or lr.is_complex() or not lr.is_floating_point() or lr.requires_grad:
            raise ValueError(f"Invalid lr: a tensor of shape {tuple(lr.shape)} and dtype {lr.dtype}"
                             f"{' requiring grad' if lr.requires_grad else ''} (accepted: a real number, or a "
                             "one-element floating-point tensor without grad, with 0 <= lr)")
        lr = float(lr)
    check_range("lr", lr, 0.0)


def check_path_flags(fused: Any, foreach: Any, capturable: Any, differentiable: Any) -> None:
    """The constructor's ``fused``/``foreach`` (None, True or False, not both True) and the two refused flags."""
    if fused is not None and not isinstance(fused, bool):
        raise ValueError(f"Invalid fused: {fused!r} (accepted: None, True or False)")
    if foreach is not None and not isinstance(foreach, bool):
        raise ValueError(f"Invalid foreach: {foreach!r} (accepted: None, True or False)")
    if fused and foreach:
        raise ValueError("Invalid fused/foreach: fused=True and foreach=True cannot be given together "
                         "(accepted: one of them True, or neither)")
    if capturable is not False:
        raise ValueError(f"Invalid capturable: {capturable!r} (accepted: False). {NOT_CAPTURABLE}")
    if differentiable is not False:
        raise ValueError(f"Invalid differentiable: {differentiable!r} (accepted: False). {NOT_DIFFERENTIABLE}")


@functools.lru_cache(maxsize=None)
def flag_names(cls: type) -> frozenset[str]:
    """The arguments of ``cls.__init__`` whose default is a bool: hyperparameters taking True or False only."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(n for n, p in sig.parameters.items() if isinstance(p.default, bool)
                     and n not in ("skip_nonfinite", "capturable", "differentiable"))


def check_standard_group(group: dict[str, Any], flags: frozenset[str]) -> None:
    """Check the entries a group of any optimizer may hold; ``flags``: its boolean hyperparameters."""
    check_lr(group["lr"])
    if "betas" in group:
        check_betas(group["betas"])
    for name in ("eps", "weight_decay"):
        if name in group:
            check_range(name, group[name], 0.0)
    if "momentum" in group:
        check_range("momentum", group["momentum"], 0.0, 1.0, hi_open=True)
    for name in flags | {"maximize"}:
        # a truthy string or None would silently pick a branch
        if name in group and not isinstance(group[name], bool):
            raise ValueError(f"Invalid {name}: {group[name]!r} (accepted: True or False)")
    for name in ("fused", "foreach"):
        if group.get(name) is not None and not isinstance(group[name], bool):
            raise ValueError(f"Invalid {name} in a parameter group: {group[name]!r} "
                             "(accepted: None, True or False)")
    if group.get("fused") and group.get("foreach"):
        raise ValueError("Invalid fused/foreach in a parameter group: both True (accepted: at most one True)")
    for name, why in (("capturable", NOT_CAPTURABLE), ("differentiable", NOT_DIFFERENTIABLE)):
        if group.get(name, False) is not False:
            raise ValueError(f"Invalid {name} in a parameter group: {group[name]!r} (accepted: False). {why}")
