"""Adam's shared pieces: bias-corrected step sizes and the denominator ``sqrt(v)/sqrt(1-b2^t) + eps``.

Every Adam-family optimizer (AdamW, AdaBelief, diffGrad, AdamP, SPAM,
Stable-SPAM, ⊥AdamW) builds its step from these, on both update paths: the
``_foreach_`` path calls :func:`adam_denom` and :func:`adam_step_`, the fused
kernels take the numbers of :func:`step_sizes` and :func:`bc2_sqrts`. The
operation order is torch.optim.AdamW's ``_multi_tensor_adam``, so results
are bit-identical to it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwise.optim._functional import bias_corrections, decoupled_decay_, ema_, ema_sq_

__all__ = ["step_sizes", "folded_step_sizes", "bc2_sqrts", "adam_denom", "adam_step_", "ema_moments_", "adamw_foreach_"]


def step_sizes(lr: float, steps: list[int], beta1: float) -> list[float]:
    """``-lr / (1 - b1^t)`` per tensor: the signed, bias-corrected step size of the first moment."""
    return [-lr / c for c in bias_corrections(steps, beta1)]


def folded_step_sizes(lr: float, steps: list[int], beta1: float, beta2: float, scale: float = 1.0) -> list[float]:
    """``-lr * scale * sqrt(1 - b2^t) / (1 - b1^t)`` per tensor: the second moment's correction folded
    into the step size (the original Adam paper's form, used by diffGrad and SPAM), with the
    denominator ``sqrt(v) + eps``."""
    return [-lr * scale * math.sqrt(c2) / c1
            for c1, c2 in zip(bias_corrections(steps, beta1), bias_corrections(steps, beta2))]


def bc2_sqrts(steps: list[int], beta2: float) -> list[float]:
    """``sqrt(1 - b2^t)`` per tensor: what the second moment's square root is divided by."""
    return [math.sqrt(c) for c in bias_corrections(steps, beta2)]


def adam_denom(v: list[Tensor], eps: float, bc2_sqrt: list[float] | None = None) -> list[Tensor]:
    """New tensors ``sqrt(v) / bc2_sqrt + eps`` (without ``bc2_sqrt``: ``sqrt(v) + eps``)."""
    denom = torch._foreach_sqrt(v)
    if bc2_sqrt is not None:
        torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(denom, eps)
    return denom


def ema_moments_(m: list[Tensor], v: list[Tensor], grads: list[Tensor], beta1: float, beta2: float) -> None:
    """``m <- b1 m + (1-b1) g`` and ``v <- b2 v + (1-b2) g^2`` in the papers' operation order."""
    ema_(m, grads, beta1)
    ema_sq_(v, grads, beta2)


def adam_step_(params: list[Tensor], m: list[Tensor], v: list[Tensor], steps: list[int], lr: float,
               beta1: float, beta2: float, eps: float) -> None:
    """``p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``, given the updated moments."""
    torch._foreach_addcdiv_(params, m, adam_denom(v, eps, bc2_sqrts(steps, beta2)), step_sizes(lr, steps, beta1))


def adamw_foreach_(params: list[Tensor], grads: list[Tensor], m: list[Tensor], v: list[Tensor],
                   vmax: list[Tensor], steps: list[int], lr: float, beta1: float, beta2: float, eps: float,
                   weight_decay: float) -> None:
    """One AdamW step with torch.optim.AdamW's ``_foreach_`` operations, in its order (bit-identical).

    ``vmax``: the running maxima of ``v`` with amsgrad, else empty; ``steps``: advanced counts.
    """
    decoupled_decay_(params, lr, weight_decay)
    torch._foreach_lerp_(m, grads, 1.0 - beta1)
    ema_sq_(v, grads, beta2)
    if vmax:
        torch._foreach_maximum_(vmax, v)
        v = vmax
    adam_step_(params, m, v, steps, lr, beta1, beta2, eps)
