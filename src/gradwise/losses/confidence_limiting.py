"""Direct coverage optimization: the confidence-limiting loss aligned to pass@N
(Chen, Raventós et al., 2025).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise._validate import check_real
from gradwise.losses._common import (LossModule, check_logits_target, check_reduction, prepare_logits_target,
                                     reduce_loss, upcast)
from gradwise.registry import register

__all__ = ["coverage_loss", "CoverageLoss", "coverage_classification_loss", "CoverageClassificationLoss"]

PAPER = ("Rethinking Fine-Tuning when Scaling Test-Time Compute: Limiting Confidence Improves Mathematical "
         "Reasoning")


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends (Mächler's split at ``-log 2``).

    Each branch only sees inputs of its own side, so the branch that
    ``torch.where`` discards cannot inject NaN into the gradient.
    """
    hi = x > -math.log(2.0)
    x_hi = torch.where(hi, x, torch.full((), -1.0, dtype=x.dtype, device=x.device))
    x_lo = torch.where(hi, torch.full((), -1.0, dtype=x.dtype, device=x.device), x)
    return torch.where(hi, torch.log(-torch.expm1(x_hi)), torch.log1p(-torch.exp(x_lo)))


def _branches(cond: Tensor, x: Tensor, safe_true: float, safe_false: float) -> tuple[Tensor, Tensor]:
    """Inputs for ``torch.where(cond, f(a), g(b))`` with each branch fed only its own side."""
    a = torch.where(cond, x, torch.full((), safe_true, dtype=x.dtype, device=x.device))
    b = torch.where(cond, torch.full((), safe_false, dtype=x.dtype, device=x.device), x)
    return a, b


def _log_neg_log1mexp(x: Tensor) -> Tensor:
    """``log(-log(1 - e^x))`` for ``x < 0``; for ``x < -20``, ``x + e^x / 2`` (error ~ e^(2x)/5)."""
    small = x < -20.0
    xs, xb = _branches(small, x, -21.0, -1.0)
    return torch.where(small, xs + 0.5 * torch.exp(xs), torch.log(-log1mexp(xb)))


def _neg_log1m_exp_neg_exp(v: Tensor) -> Tensor:
    """``-log(1 - exp(-e^v))``; for ``v < -20``, ``-v + e^v / 2`` (error ~ e^(2v)/24)."""
    small = v < -20.0
    vs, vb = _branches(small, v, -21.0, 0.0)
    return torch.where(small, -vs + 0.5 * torch.exp(vs), -log1mexp(-torch.exp(vb)))


def _coverage_per_sample(logp: Tensor, n: float) -> Tensor:
    """``-log(1 - (1 - p)^n)`` from ``logp``, in log-log space.

    ``(1 - p)^n = exp(-e^v)`` with ``v = log n + log(-log(1 - p))``, so the loss
    is ``-log(1 - exp(-e^v))``: finite even when ``p`` underflows (then
    ``loss ~ -log p - log n``) and 0 when ``p`` rounds to 1.
    """
    if n == 1.0:
        return -logp.clamp_max(0.0)
    # p = 1 exactly would give log(1 - p) = -inf and a 0 * inf gradient; just below it the
    # loss is 0 to working precision and its gradient F(N, p) -> 0, which is the limit
    logp = logp.clamp_max(-1e-30)
    return _neg_log1m_exp_neg_exp(math.log(n) + _log_neg_log1mexp(logp))


@register(kind="loss", paper=PAPER, year=2025, arxiv="2502.07154", code=None,
          summary="Direct coverage optimization: -log(1 - (1 - p)^N), the pass@N-aligned, confidence-limited CE",
          info={"reliability": {"inputs": ("logprob",), "labels": "none"}})
def coverage_loss(logprob: Tensor, *, n: float = 16, reduction: str = "mean") -> Tensor:
    r"""Direct coverage optimization (DCO) loss of Chen, Raventós, Cheng, Ganguli & Druckmann (2025).

    Paper: "Rethinking Fine-Tuning when Scaling Test-Time Compute: Limiting
    Confidence Improves Mathematical Reasoning", NeurIPS 2025, arXiv:2502.07154.
    Authors' code: not found in the stores available here, so the tests check
    the closed form and its limits.

    Math: with ``p = exp(logprob)`` the model's probability of the correct
    answer (for a sequence, the product of its token probabilities: pass the
    summed token log-probs), pass@N succeeds with probability (coverage)
    ``1 - (1 - p)^N`` and the loss is its negative log::

        L_N(p) = -log(1 - (1 - p)^N)

        dL_N/dlogp = -F(N, p),   F(N, p) = N p (1 - p)^(N-1) / (1 - (1 - p)^N)

    so the gradient is cross-entropy's (``-1`` w.r.t. ``logp``) scaled by
    ``F`` in ``[0, 1]``: ``F -> 1`` as ``p -> 0`` and ``F -> 0`` as ``p -> 1``
    for ``N > 1``, i.e. examples the model is already confident about stop
    pushing it to more confidence: the loss limits confidence. ``N = 1``
    is cross-entropy exactly; for small ``p``,
    ``L_N ~ -log p - log N``.

    Numerics: evaluated in log-log space,
    ``-log(1 - exp(-e^v))`` with ``v = log N + log(-log(1 - p))`` and the
    accurate ``log(1 - e^x)``, so it stays finite when ``p`` underflows and
    for any ``logprob <= 0`` (``logprob`` is clamped to at most ``-1e-30``,
    where the loss is 0 to working precision and the gradient vanishes, its
    limit at ``p = 1``). ``n`` may be any real ``>= 1``.

    Choices: ``n = 16`` by default (the paper sweeps N; choose the pass@N budget
    you will sample with). ``logprob`` is any floating tensor of per-example
    log-probabilities; ``reduction`` averages or sums over all its elements.

    Example::

        >>> logp = torch.log(torch.tensor([0.01, 0.5, 0.99], requires_grad=True))
        >>> coverage_loss(logp, n=8, reduction="none")   # the 0.99 example costs ~0
    """
    n = check_real("n", n, 1.0)  # the pass@N budget
    check_reduction(reduction)
    if not torch.is_tensor(logprob) or not logprob.is_floating_point():
        raise ValueError("Invalid logprob: expected a floating-point tensor of log-probabilities (<= 0)")
    x = upcast(logprob)
    return reduce_loss(_coverage_per_sample(x, n), reduction).to(logprob.dtype)


class CoverageLoss(LossModule):
    """Module twin of :func:`coverage_loss` (arXiv:2502.07154; see it for the math).

    ``CoverageLoss(n=16)(logprob)``.
    """

    function = coverage_loss


@register(kind="loss", paper=PAPER, year=2025, arxiv="2502.07154", code=None,
          summary="DCO on class logits: -log(1 - (1 - softmax(h)_y)^N)",
          info={"reliability": {"ignore_index": True}})
def coverage_classification_loss(logits: Tensor, target: Tensor, *, n: float = 16, reduction: str = "mean",
                                 ignore_index: int = -100, validate: bool = True) -> Tensor:
    r"""The DCO loss of arXiv:2502.07154 with ``p = softmax(logits)_y`` (one-token answers).

    Same paper and math as :func:`coverage_loss` ("Rethinking Fine-Tuning when
    Scaling Test-Time Compute: Limiting Confidence Improves Mathematical
    Reasoning", 2025): ``L_N = -log(1 - (1 - p_y)^N)`` with
    ``log p_y = -cross_entropy(logits, target)``; ``n = 1`` is cross-entropy.
    ``validate=False`` skips the label-range check (one host sync).

    Example::

        >>> logits, y = torch.randn(8, 10, requires_grad=True), torch.randint(0, 10, (8,))
        >>> coverage_classification_loss(logits, y, n=4).backward()
    """
    n = check_real("n", n, 1.0)  # the pass@N budget
    check_reduction(reduction)
    check_logits_target(logits, target, ignore_index, validate=validate)
    x, tgt, mask = prepare_logits_target(logits, target, ignore_index)
    logp = -F.cross_entropy(x, tgt, reduction="none")
    return reduce_loss(_coverage_per_sample(logp, n), reduction, mask).to(logits.dtype)


class CoverageClassificationLoss(LossModule):
    """Module twin of :func:`coverage_classification_loss` (arXiv:2502.07154).

    ``CoverageClassificationLoss(n=16)(logits, target)``.
    """

    function = coverage_classification_loss
