"""What several rl modules share: batch checks that run before any ``.grad`` is written, the
Polyak (EMA) target update that ODICE and IQL-style loops use, and the transition fields and lazy
gymnasium import of the data modules."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["check_batch", "check_tensor", "polyak_update", "require_gymnasium", "FIELDS"]

FIELDS = ("obs", "action", "reward", "next_obs", "done", "timeout")  # a transition dataset's tensors


def require_gymnasium():
    """The gymnasium module (the optional ``rl`` extra), or ImportError saying how to install it."""
    try:
        import gymnasium
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("gradwise.rl.data needs gymnasium: pip install 'gradwise[rl]'") from e
    return gymnasium


def check_tensor(name: str, value, ndim: int | tuple[int, ...] | None = None) -> Tensor:
    """``value`` as given when it is a floating or bool tensor of ``ndim`` dims; ValueError otherwise."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if value.dim() not in dims:
            raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dims, got shape {tuple(value.shape)}")
    return value


def check_batch(**tensors: Tensor) -> int:
    """The common leading (batch) size of ``tensors``; ValueError naming the first that differs."""
    size, first = None, None
    for name, t in tensors.items():
        check_tensor(name, t)
        if t.dim() == 0:
            raise ValueError(f"{name} must have a batch dimension, got a scalar")
        if size is None:
            size, first = t.shape[0], name
        elif t.shape[0] != size:
            raise ValueError(f"batch sizes differ: {first} has {size} rows, {name} has {t.shape[0]}")
    return int(size or 0)


@torch.no_grad()
def polyak_update(target: nn.Module | Iterable[Tensor], source: nn.Module | Iterable[Tensor], rate: float) -> None:
    """``θ_target ← (1 − rate) θ_target + rate θ`` for each parameter pair (ODICE's ``beta``, IQL's
    ``soft_target_update_rate``)."""
    tp = list(target.parameters() if isinstance(target, nn.Module) else target)
    sp = list(source.parameters() if isinstance(source, nn.Module) else source)
    if len(tp) != len(sp):
        raise ValueError(f"target has {len(tp)} parameters, source has {len(sp)}")
    if tp:
        torch._foreach_lerp_(tp, sp, float(rate))
