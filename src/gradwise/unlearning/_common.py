"""Pieces the unlearning modules share."""
from __future__ import annotations

import torch

__all__ = ["describe"]


def describe(value) -> str:
    """A bad argument in words for a ValueError: a tensor's shape and dtype, else its type's name."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    return type(value).__name__
