"""Validation shared by the preference objectives.

``check_logps`` is particular to preference (sequence log-probabilities); the number checks are
:mod:`gradwise._validate`'s, re-exported so the objectives import their checks from one place.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._validate import check_nonneg, check_positive

__all__ = ["check_logps", "check_positive", "check_nonneg"]


def check_logps(**tensors: Tensor) -> torch.Size:
    """All given tensors are floating point with the same shape ([B] for sequence log-probs).

    Raises ``ValueError`` naming the offending argument; returns the common shape.
    """
    shape = None
    first = None
    for name, t in tensors.items():
        if not torch.is_tensor(t) or not t.is_floating_point():
            raise ValueError(f"Invalid {name}: expected a floating-point tensor of log-probabilities, got "
                             f"{type(t).__name__ if not torch.is_tensor(t) else t.dtype}")
        if shape is None:
            shape, first = t.shape, name
        elif t.shape != shape:
            raise ValueError(f"Invalid {name}: expected shape {tuple(shape)} (as {first}), got {tuple(t.shape)}")
    return shape
