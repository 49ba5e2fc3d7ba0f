"""Z-loss (de Brébisson & Vincent, 2016): a shift- and scale-invariant
classification loss of the spherical family.

Not PaLM's auxiliary ``coef * log^2 Z`` "z-loss" of language models (Chowdhery et al., 2022; Wortsman et al.,
2023): that one is :func:`gradwise.losses.output_logit_z_loss`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise._validate import check_nonneg, check_positive, check_real
from gradwise.losses._common import LossModule, check_logits_target, prepare_logits_target, reduce_loss
from gradwise.registry import register

__all__ = ["z_loss", "ZLoss"]


class _ZTarget(torch.autograd.Function):
    """``z_c = (o_c - mu) / sqrt(var + eps^2)`` per row with a one-pass analytic backward.

    ``dz_c/do_k = ([k = c] - 1/D - z_c (o_k - mu) / (sigma D)) / sigma``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, tgt: Tensor, eps: float) -> Tensor:
        d = x.shape[1]
        mu = x.mean(1, keepdim=True)
        c = x - mu                                   # two-pass variance: exact under shifts
        var = torch.linalg.vector_norm(c, dim=1).square() / d
        inv_sigma = torch.rsqrt(var + eps * eps)
        z_c = c.gather(1, tgt[:, None]).squeeze(1) * inv_sigma
        ctx.save_for_backward(c, tgt, inv_sigma, z_c)
        return z_c

    @staticmethod
    def backward(ctx, g: Tensor):
        c, tgt, inv_sigma, z_c = ctx.saved_tensors
        d = c.shape[1]
        gs = g * inv_sigma                      # g / sigma
        slope = -gs * z_c * inv_sigma / d       # coefficient of (o_k - mu)
        grad = torch.addcmul((-gs / d)[:, None], c, slope[:, None])
        grad.scatter_add_(1, tgt[:, None], gs[:, None])
        return grad, None, None


@register(kind="loss",
          paper="The Z-loss: a shift and scale invariant classification loss belonging to the Spherical Family",
          year=2016, arxiv="1604.08859", code=None,
          summary="softplus(a (b - z_y)) / a on the z-normalized logits z = (o - mean) / std",
          info={"reliability": {"ignore_index": True, "expected": {
              "neg_inf_other_class": ("nan", "the z-score of the target logit uses the mean and deviation of all "
                                             "logits, undefined with a -inf one")}}})
def z_loss(logits: Tensor, target: Tensor, *, a: float = 1.0, b: float | None = None, eps: float = 1e-12,
           reduction: str = "mean", ignore_index: int = -100, validate: bool = True) -> Tensor:
    r"""Z-loss of de Brébisson & Vincent (2016) (not PaLM's ``log^2 Z`` penalty: see :func:`output_logit_z_loss`).

    Paper: "The Z-loss: a shift and scale invariant classification loss
    belonging to the Spherical Family", Alexandre de Brébisson, Pascal Vincent,
    arXiv:1604.08859. Authors' code: a Theano/GPU op for the spherical family
    ("Factored output algorithm", with a Z-loss example) exists, but we could
    not identify its repository here, so there is no golden data; the tests
    check the closed form and the invariances.

    Math (pre-activations ``o`` over ``D`` classes, target ``c``)::

        mu = (1/D) sum_k o_k,   sigma^2 = (1/D) sum_k o_k^2 - mu^2   (population variance)
        z_k = (o_k - mu) / sigma
        L_Z(o, c) = (1/a) * softplus(a (b - z_c)) = (1/a) log(1 + exp(a (b - z_c)))

    ``L_Z`` depends on ``o`` only through ``z``, so it is invariant to adding a
    constant to a row of logits and to multiplying it by a positive number.
    ``z_c`` is at most ``sqrt(D - 1)`` (reached by a one-hot-shaped ``o``).

    Choices: the paper tunes ``a`` and ``b`` per task and states no universal
    default. We default to ``a = 1`` and ``b = sqrt(D - 1)`` (``b=None``), the
    largest value ``z_c`` can reach, so the loss keeps pushing ``z_c`` up
    until the target's logit stands out as far as the normalization allows;
    pass numbers to reproduce a tuned setting. We use
    ``sigma = sqrt(var + eps^2)`` so a constant row (``var = 0``) gives
    ``z = 0`` and a zero gradient instead of NaN; this breaks exact scale
    invariance only for ``sigma`` near ``eps``. Mean and variance are two-pass
    (``mean``, then the norm of ``o - mu``; accurate for logits up to 1e4 in
    float32) with a hand-written one-pass backward;
    half-precision inputs are computed in float32. ``validate=False`` skips the label-range check (one host sync).

    Example::

        >>> logits, y = torch.randn(8, 10, requires_grad=True), torch.randint(0, 10, (8,))
        >>> z_loss(logits, y).backward()
        >>> torch.allclose(z_loss(3 * logits + 5, y), z_loss(logits, y))
        True
    """
    check_positive("a", a)
    if b is not None:  # None: sqrt(C - 1)
        check_real("b", b)
    check_nonneg("eps", eps)
    check_logits_target(logits, target, ignore_index, validate=validate)
    x, tgt, mask = prepare_logits_target(logits, target, ignore_index)
    num_classes = x.shape[1]
    bb = math.sqrt(max(num_classes - 1, 0)) if b is None else float(b)
    z_c = _ZTarget.apply(x, tgt, float(eps))
    per = F.softplus(a * (bb - z_c)) / a
    return reduce_loss(per, reduction, mask).to(logits.dtype)


class ZLoss(LossModule):
    """Module twin of :func:`z_loss` (see it for the paper, arXiv:1604.08859, and the math).

    ``ZLoss(a=1.0, b=None)(logits, target)``.
    """

    function = z_loss
