"""StableMax cross-entropy (Prieto et al., 2025): the Softmax with ``exp`` replaced by a ramp that grows
linearly, so scaling the logits cannot make the loss round to 0 (Softmax Collapse)."""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise.losses._common import LossModule, check_logits_target, check_reduction, prepare_logits_target, \
    reduce_loss
from gradwise.registry import register

__all__ = ["stablemax_probabilities", "log_stablemax", "stablemax_cross_entropy", "StableMaxCrossEntropyLoss"]

PAPER = "Grokking at the Edge of Numerical Stability"
CODE = "https://github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability"


def _s(x: Tensor) -> Tensor:
    """``s(x) = x + 1`` for ``x >= 0``, ``1 / (1 - x)`` otherwise, written as ``t = 1 + |x|`` and ``t`` or ``1/t``."""
    t = x.abs().add_(1.0)
    return torch.where(x >= 0, t, t.reciprocal())


def _log_s(x: Tensor) -> Tensor:
    """``log s(x) = sign(x) log1p(|x|)``: finite for every finite ``x`` (no ``log 0``, no overflow of ``1 - x``)."""
    return torch.log1p(x.abs()).copysign(x)


class _StableMaxCE(torch.autograd.Function):
    """Per-sample ``L = log(S / s_t)`` with ``S = sum_j s(x_j)`` and ``R = S - s_t`` summed over the other
    classes (no cancellation): ``log1p(R / s_t)`` where ``R < s_t``, else ``log R + log1p(s_t / R) - log s_t``
    (no overflow of ``R / s_t``); a one-pass analytic backward::

        dL/dx_j = s'(x_j) / S                    (j != t)
        dL/dx_t = -(R / S) s'(x_t) / s_t,        s'(x_t) / s_t = 1 / s_t (x_t >= 0), s_t (x_t < 0)
        s'(x) = 1 for x >= 0, 1 / (1 - x)^2 = s(x)^2 otherwise.
    """

    @staticmethod
    def forward(ctx, x: Tensor, tgt: Tensor) -> Tensor:
        ctx.fused = _use_fused(x)
        if ctx.fused:  # one read of x (losses/csrc/stablemax.cpp)
            loss, s_t, rest = torch.ops.gradwise_losses.stablemax_ce_forward(x, tgt)
        else:
            s = _s(x)
            s_t = s.gather(1, tgt[:, None]).squeeze(1)
            rest = s.scatter_(1, tgt[:, None], 0.0).sum(1)  # R: the other classes' mass, summed without s_t
            x_t = x.gather(1, tgt[:, None]).squeeze(1)
            loss = torch.where(rest < s_t, torch.log1p(rest / s_t),
                               torch.log(rest) + torch.log1p(s_t / rest) - _log_s(x_t))
        ctx.save_for_backward(x, tgt, s_t, rest)
        return loss

    @staticmethod
    def backward(ctx, g: Tensor):
        x, tgt, s_t, rest = ctx.saved_tensors
        if ctx.fused:
            return torch.ops.gradwise_losses.stablemax_ce_backward(x, tgt, s_t, rest, g), None
        total = rest + s_t
        c = (g / total)[:, None]
        grad = torch.pow(1.0 - x.clamp(max=0.0), -2.0).mul_(c)  # s'(x) / S: 1 / (1 - min(x, 0))^2 / S
        x_t = x.gather(1, tgt[:, None]).squeeze(1)
        dlog_st = torch.where(x_t >= 0, s_t.reciprocal(), s_t)  # s'(x_t) / s_t, with no underflow of s'(x_t)
        grad.scatter_(1, tgt[:, None], (-g * (rest / total) * dlog_st)[:, None])
        return grad, None


def _use_fused(x: Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.shape[1] == 0:
        return False
    if torch.compiler.is_compiling():  # traced as torch ops, which the compiler fuses itself
        return False
    from gradwise._kernels import family

    return family("losses").available()


def stablemax_probabilities(logits: Tensor, dim: int = -1) -> Tensor:
    r"""StableMax of arXiv 2501.04697: ``s(x_i) / sum_j s(x_j)`` along ``dim``, with
    ``s(x) = x + 1`` for ``x >= 0`` and ``1 / (1 - x)`` for ``x < 0`` (see :func:`stablemax_cross_entropy`).
    Half-precision inputs are computed in float32 and the result cast back."""
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise ValueError(f"Invalid logits: expected a floating-point tensor, got "
                         f"{type(logits).__name__ if not torch.is_tensor(logits) else logits.dtype}")
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    s = _s(x)
    return (s / s.sum(dim, keepdim=True)).to(logits.dtype)


def log_stablemax(logits: Tensor, dim: int = -1) -> Tensor:
    r"""``log StableMax(x)_i = log s(x_i) - log sum_j s(x_j)`` along ``dim`` (arXiv 2501.04697), with
    ``log s(x) = sign(x) log1p(|x|)`` so no ``log 0`` is taken for finite logits. Half-precision inputs are
    computed in float32 and the result cast back."""
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise ValueError(f"Invalid logits: expected a floating-point tensor, got "
                         f"{type(logits).__name__ if not torch.is_tensor(logits) else logits.dtype}")
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return (_log_s(x) - torch.log(_s(x).sum(dim, keepdim=True))).to(logits.dtype)


@register(kind="loss", paper=PAPER, year=2025, arxiv="2501.04697", code=CODE,
          summary="cross-entropy of StableMax, s(x_i) / sum_j s(x_j) with s(x) = x + 1 (x >= 0), 1 / (1 - x) "
                  "(x < 0): no Softmax Collapse in float32",
          info={"reliability": {"ignore_index": True}})
def stablemax_cross_entropy(logits: Tensor, target: Tensor, *, reduction: str = "mean", ignore_index: int = -100,
                            validate: bool = True) -> Tensor:
    r"""StableMax cross-entropy of Prieto et al. (2025).

    Paper: "Grokking at the Edge of Numerical Stability", Lucas Prieto,
    Melih Barsbey, Pedro A. M. Mediano, Tolga Birdal, 2025, arXiv:2501.04697.
    Authors' code: https://github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability
    (``utils.py``: ``s``, ``log_stablemax``, ``stablemax_cross_entropy``).

    Math (logits ``x`` over ``C`` classes, target ``t``)::

        s(x) = x + 1          if x >= 0
             = 1 / (1 - x)    if x < 0
        StableMax(x)_i = s(x_i) / sum_j s(x_j)
        L(x, t) = -log StableMax(x)_t = log(1 + R / s(x_t)),   R = sum_{j != t} s(x_j)

    ``s`` is continuous with a continuous first derivative at 0 (``s'(x) = 1``
    for ``x >= 0``, ``1 / (1 - x)^2`` below), grows linearly rather than
    exponentially, and so the loss of a correctly classified sample shrinks
    like ``R / x_t`` as the logits are scaled, instead of ``exp(-margin)``:
    in float32 it stays nonzero long after the softmax cross-entropy has
    rounded to exactly 0 (the paper's Softmax Collapse).

    Departures from the authors' code, all numerical (the function is the same):

    - They cast the logits to float64 and compute ``log(s / sum s)``; we
      compute in the logits' dtype (float32 at least: half precision is
      upcast) as ``log1p(R / s_t)``, ``R`` the other classes' sum (for
      ``R >= s_t``: ``log R + log1p(s_t / R) - log s_t`` with
      ``log s_t = sign(x_t) log1p(|x_t|)``). That has no cancellation, no
      overflow of ``R / s_t`` and no ``log 0``, so float32 results agree
      with their float64 ones to float32 rounding (and stay positive where
      ``R / s_t`` is below float64's resolution, where theirs is 0), and the
      speed target (within 1.5x of ``F.cross_entropy``) holds. On CPU in
      float32/float64 forward and backward are one fused kernel each
      (``losses/csrc/stablemax.cpp``; 0.4x ``F.cross_entropy``'s time at
      [4096, 1000], one thread), elsewhere a composition of torch ops
      (2.2x on CPU: the kernel is what meets the target). Their ``s`` adds ``epsilon = 1e-30`` to ``1 - x``, a no-op in
      float64 for ``x < 0``; we leave it out.
    - They return the float64 loss; we cast back to the logits' dtype, as
      every gradwise loss does.
    - Their ``reduction`` is ``"mean"`` or, for anything else, the per-sample
      loss of shape ``[N, 1]``; ours accepts ``"mean"``, ``"sum"`` and
      ``"none"`` (shape ``[N]``) and ``ignore_index`` as ``F.cross_entropy``
      (ignored samples get loss 0 and do not count in the mean).
    - The gradient is written out (one pass, no saved logarithms); it equals
      autograd's through their formula (tests check both in float64).

    ``validate=False`` skips the label-range check (one host sync).

    Example::

        >>> logits, y = torch.randn(8, 10, requires_grad=True), torch.randint(0, 10, (8,))
        >>> stablemax_cross_entropy(logits, y).backward()
    """
    check_reduction(reduction)
    check_logits_target(logits, target, ignore_index, validate=validate)
    x, tgt, mask = prepare_logits_target(logits, target, ignore_index)
    per = _StableMaxCE.apply(x, tgt)
    return reduce_loss(per, reduction, mask).to(logits.dtype)


class StableMaxCrossEntropyLoss(LossModule):
    """Module twin of :func:`stablemax_cross_entropy` (see it for the paper, arXiv:2501.04697, and the math).

    ``StableMaxCrossEntropyLoss(reduction="mean", ignore_index=-100)(logits, target)``.
    """

    function = stablemax_cross_entropy
