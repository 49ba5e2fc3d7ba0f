"""Tensor checks and the loss reduction shared by the rl objectives of this module group (f-DVL, H2O,
VaGraM, Adaptive RR): each raises ``ValueError`` naming the argument before any computation, so a bad call
never writes a ``.grad``."""
from __future__ import annotations

from torch import Tensor

from gradwise._validate import check_choice

__all__ = ["check_float_tensor", "check_reduction", "check_same_shape", "reduce_loss"]

REDUCTIONS = ("mean", "sum", "none")


def check_float_tensor(name: str, value, *, min_dim: int = 0) -> Tensor:
    """``value`` when it is a floating-point tensor with at least ``min_dim`` dimensions."""
    if not isinstance(value, Tensor):
        raise ValueError(f"Invalid {name}: {type(value).__name__} (accepted: a floating-point torch.Tensor)")
    if not value.is_floating_point():
        raise ValueError(f"Invalid {name}: dtype {value.dtype} (accepted: a floating-point torch.Tensor)")
    if value.dim() < min_dim:
        raise ValueError(f"Invalid {name}: shape {tuple(value.shape)} (accepted: at least {min_dim} dimension(s))")
    return value


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Equal shapes (no broadcasting: a [B] against a [B, 1] would silently give [B, B])."""
    if a.shape != b.shape:
        raise ValueError(f"Invalid {name_b}: shape {tuple(b.shape)} (accepted: the shape of {name_a}, "
                         f"{tuple(a.shape)})")


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """``mean`` / ``sum`` / ``none`` of an elementwise loss."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def check_reduction(reduction) -> str:
    return check_choice("reduction", reduction, REDUCTIONS)
